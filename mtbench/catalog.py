"""The registries of task kinds, tasks and data sets.

They are filled from three places, and each entry records which (`Registry.source`):

* built-ins: the specs in ``tasks/`` (installed as ``mtbench_tasks``), which register themselves on import;
* installed packages advertising the entry-point group ``mtbench.tasks`` (the entry point's object is a module
  whose kinds, tasks and data sets register themselves on import, or a `TaskKind`, `TaskSpec` or `DatasetSpec`,
  or a list of them);
* plugin files named with ``--plugins`` (`mtbench.methods.load_plugin_path`), which call the ``register_*``
  functions below.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

from mtbench.errors import PluginError, UnknownNameError
from mtbench.registry import BUILTIN, Registry, registering_from
from mtbench.specs import DatasetSpec, TaskKind, TaskSpec

ENTRY_POINT_GROUP = "mtbench.tasks"
KINDS: Registry[TaskKind] = Registry("task kind", listing="kinds")
TASKS: Registry[TaskSpec] = Registry("task")
DATASETS: Registry[DatasetSpec] = Registry("dataset")
_loaded = False


def load_builtins() -> None:
    """Register the built-in task kinds, tasks and data sets, then those of installed entry points (once).

    The built-in readers are registered in between, so that no third-party module imported later is taken for
    the origin of a built-in reader or task it happens to import first.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    with registering_from(BUILTIN):
        importlib.import_module("mtbench_tasks")
    from mtbench.data.layouts import load_builtins as load_layouts

    load_layouts()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist.name if entry.dist else "unknown package"
        with registering_from(f"entry point {entry.name} ({dist})"):
            try:
                loaded = entry.load()  # a module registers what it defines as it is imported
            except Exception as exc:
                raise PluginError(
                    f"entry point {entry.name!r} ({entry.value}) failed to load: {exc}",
                    fix=f"fix or uninstall the package providing it ({dist})",
                ) from exc
            if not isinstance(loaded, ModuleType):
                register_specs(loaded if isinstance(loaded, list | tuple) else [loaded], f"entry point {entry.name!r}")


def register_specs(specs: Iterable[Any], where: str) -> None:
    """Register each `TaskKind`, `TaskSpec` or `DatasetSpec` of ``specs`` (kinds first); anything else is a
    `PluginError` naming ``where``."""
    specs = list(specs)
    for spec in specs:
        if not isinstance(spec, TaskKind | TaskSpec | DatasetSpec):
            raise PluginError(
                f"{where} does not provide task kinds, tasks or data sets",
                expected="mtbench.specs.TaskKind, TaskSpec or DatasetSpec objects, or a module registering them",
                found=type(spec).__name__,
            )
    for spec in sorted(specs, key=lambda s: not isinstance(s, TaskKind)):
        if isinstance(spec, TaskKind):
            register_kind(spec)
        elif isinstance(spec, TaskSpec):
            register_task(spec)
        else:
            register_dataset(spec)


def register_kind(kind: TaskKind, source: str | None = None) -> TaskKind:
    """Register a task kind under its name; ``source``: where it comes from (default: the importing context)."""
    return KINDS.register(kind.name, kind, source=source)


def register_task(spec: TaskSpec, source: str | None = None) -> TaskSpec:
    """Register a task under ``family/name``; its kind must be a registered one (so `ls kinds` shows it)."""
    if spec.kind.name not in KINDS or KINDS.get(spec.kind.name) != spec.kind:
        raise PluginError(
            f"task {spec.key!r} names the task kind {spec.kind.name!r}, which is not registered"
            + (" (another kind of that name is)" if spec.kind.name in KINDS else ""),
            expected="a kind registered with register_kind before its tasks",
            found=f"kind {spec.kind.name!r}; registered: {', '.join(KINDS.names())}",
            fix=f"register_kind({spec.kind.name.upper()}) first, or use a registered kind (`mtbench ls kinds`)",
        )
    return TASKS.register(spec.key, spec, source=source)


def register_dataset(spec: DatasetSpec, source: str | None = None) -> DatasetSpec:
    """Register a data set under its name (its tasks are those of its family)."""
    return DATASETS.register(spec.name, spec, source=source)


def kinds() -> Registry[TaskKind]:
    load_builtins()
    return KINDS


def kind(name: str) -> TaskKind:
    """Look a task kind up by name (``segmentation``, ``depth`` ...)."""
    load_builtins()
    return KINDS.get(name)


def tasks() -> Registry[TaskSpec]:
    load_builtins()
    return TASKS


def datasets() -> Registry[DatasetSpec]:
    load_builtins()
    return DATASETS


def dataset(name: str) -> DatasetSpec:
    return datasets().get(name)


def family_tasks(family: str) -> list[TaskSpec]:
    """Every task of a data family, in registration order."""
    return [spec for _, spec in tasks().items() if spec.family == family]


def task(family: str, name: str) -> TaskSpec:
    """Look a task up by its short name within a family (``depth`` in ``nyuv2``)."""
    registry = tasks()
    key = name if "/" in name else f"{family}/{name}"
    if key in registry:
        return registry.get(key)
    local: Registry[TaskSpec] = Registry(f"{family} task", listing=f"tasks {family}")
    for spec in family_tasks(family):
        local.register(spec.name, spec)
    raise local.unknown(name.split("/")[-1]) from None


__all__ = [
    "KINDS",
    "TASKS",
    "DATASETS",
    "UnknownNameError",
    "dataset",
    "datasets",
    "family_tasks",
    "kind",
    "kinds",
    "load_builtins",
    "register_dataset",
    "register_kind",
    "register_specs",
    "register_task",
    "task",
    "tasks",
]
