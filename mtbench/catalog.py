"""The registries of task kinds, tasks and data sets, filled from the built-in specs in ``tasks/``."""

from __future__ import annotations

import importlib

from mtbench.errors import UnknownNameError
from mtbench.registry import Registry
from mtbench.specs import DatasetSpec, TaskKind, TaskSpec

KINDS: Registry[TaskKind] = Registry("task kind")
TASKS: Registry[TaskSpec] = Registry("task")
DATASETS: Registry[DatasetSpec] = Registry("dataset")
_loaded = False


def load_builtins() -> None:
    """Import the built-in task kinds, tasks and data sets (``tasks/``, installed as ``mtbench_tasks``) once."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("mtbench_tasks")


def register_kind(kind: TaskKind, source: str = "builtin") -> TaskKind:
    return KINDS.register(kind.name, kind, source=source)


def register_task(spec: TaskSpec, source: str = "builtin") -> TaskSpec:
    return TASKS.register(spec.key, spec, source=source)


def register_dataset(spec: DatasetSpec, source: str = "builtin") -> DatasetSpec:
    return DATASETS.register(spec.name, spec, source=source)


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
    local: Registry[TaskSpec] = Registry(f"{family} task")
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
    "load_builtins",
    "register_dataset",
    "register_kind",
    "register_task",
    "task",
    "tasks",
]
