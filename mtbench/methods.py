"""Method plugins: the method interface, the registry of built-in and third-party methods, and the loader of
plugin files.

Methods come from three places, and every result records which:

* built-ins: the modules of ``baselines/`` (installed as ``mtbench_baselines``);
* installed packages advertising the entry-point group ``mtbench.methods`` (the entry point's
  object is a `MethodInfo`, or a module defining ``METHOD``);
* files or folders named explicitly with ``--plugins PATH`` (never an implicit scan of the
  working directory).

A plugin module defines ``METHOD = MethodInfo(...)`` (or ``METHODS = [...]``). The same file may also define
readers (``@register_layout``), task kinds, tasks and data sets (``mtbench.catalog.register_kind`` ...):
`load_plugin_path` registers everything a file defines, each entry recording the file as its source, or, when
one registration fails, nothing of it. Readers, kinds and tasks of installed packages have their own
entry-point groups (``mtbench.layouts``, ``mtbench.tasks``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from mtbench.errors import MtbenchError, PluginError
from mtbench.registry import Registry, registered_from, registering_from, unregister_source

ENTRY_POINT_GROUP = "mtbench.methods"
#: what `MethodInfo.family` may say, and what the leaderboard does with each
FAMILIES = ("dense", "sparse", "front")


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, for the registry, ``mtbench ls methods`` and result provenance.

    Attributes:
        name: registry name, used on the command line (``meta-sparsity``).
        summary: one line.
        method: the class implementing it (the engine instantiates it with its config).
        config: the method's config dataclass (``--set key=value`` is checked against it).
        paper: citation of the paper it reproduces ("" for our own variants).
        link: where the paper is.
        deviations: where mtbench's implementation differs from the paper, in plain words.
        family: how the leaderboard treats it (`FAMILIES`): ``dense`` (one dense network), ``sparse`` (learns
            or imposes channel sparsity; compared with the front at its own cost) or ``front`` (its variants over
            one option trace the cost–Δm front that the others are compared with; fixed-λ).
    """

    name: str
    summary: str
    method: type
    config: type
    paper: str = ""
    link: str = ""
    deviations: str = ""
    family: str = "dense"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise PluginError(
                f"method {self.name!r}: unknown family {self.family!r}",
                expected=" | ".join(FAMILIES),
                found=repr(self.family),
                fix="family='sparse' for a method that zeroes channels, 'dense' otherwise",
            )
        if not dataclasses.is_dataclass(self.config):
            raise PluginError(
                f"method {self.name!r}: config must be a dataclass",
                expected="a @dataclass with defaults",
                found=repr(self.config),
            )


METHODS: Registry[MethodInfo] = Registry("method")
_loaded_builtins = False
#: (file, sha256) -> its source and what it registered (registry kind -> names): loading it twice is a no-op
_loaded_files: dict[tuple[Path, str], tuple[str, dict[str, list[str]]]] = {}


def _checked(infos: list[Any], where: str) -> list[MethodInfo]:
    """``infos`` if every one is a `MethodInfo`; a `PluginError` naming ``where`` otherwise."""
    for info in infos:
        if not isinstance(info, MethodInfo):
            raise PluginError(
                f"{where} does not provide MethodInfo objects",
                expected="mtbench.methods.MethodInfo, or a module defining METHOD or METHODS",
                found=type(info).__name__,
            )
    return infos


def _infos_of(module: ModuleType) -> list[MethodInfo]:
    infos = list(getattr(module, "METHODS", ())) + ([module.METHOD] if hasattr(module, "METHOD") else [])
    return _checked(infos, f"module {module.__name__}")


def _register_all(infos: Iterable[MethodInfo], source: str) -> list[str]:
    return [METHODS.register(info.name, info, source=source).name for info in infos]


def load_builtins() -> None:
    """Register the methods of ``baselines/`` and of installed entry points (once)."""
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    package = importlib.import_module("mtbench_baselines")
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not module_info.name.startswith("_"):
            module = importlib.import_module(f"mtbench_baselines.{module_info.name}")
            _register_all(_infos_of(module), "builtin")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:
            raise PluginError(
                f"entry point {entry.name!r} ({entry.value}) failed to load: {exc}",
                fix=f"fix or uninstall the package providing it ({entry.dist.name if entry.dist else '?'})",
            ) from exc
        infos = _infos_of(loaded) if isinstance(loaded, ModuleType) else [loaded]
        dist = entry.dist.name if entry.dist else "unknown package"
        _register_all(_checked(infos, f"entry point {entry.name!r}"), f"entry point {entry.name} ({dist})")


def _load_all_builtins() -> None:
    """Register every built-in (and installed) method, reader, kind, task and data set, so that a plugin that
    imports a built-in module first is not taken for its origin, and a plugin's duplicate names are refused."""
    from mtbench import catalog
    from mtbench.data.layouts import load_builtins as load_layouts

    catalog.load_builtins()
    load_layouts()
    load_builtins()


def _still_registered(registered: dict[str, list[str]], source: str) -> bool:
    """Whether everything a file registered is still there (a test may have emptied a registry since, or put a
    fresh method registry in place of the one that holds its methods)."""
    now = registered_from(source)
    methods_now = METHODS.from_source(source)
    return all(
        set(names) <= set(methods_now if kind == METHODS.kind else now.get(kind, ()))
        for kind, names in registered.items()
    )


def load_plugin_path(path: str | Path) -> list[str]:
    """Load plugins from one ``.py`` file or every ``.py`` file of a folder; returns the names of their methods.

    A file may define methods (``METHOD``/``METHODS``) and register readers, task kinds, tasks and data sets as it
    is imported; `mtbench.registry.registered_from` lists them (by the source ``file PATH (sha256 ...)``).
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise PluginError(
            f"plugin path {path} does not exist",
            expected="a .py file or a folder of them",
            found="nothing",
            fix="check the --plugins argument",
        )
    files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_")) if path.is_dir() else [path]
    if path.is_file() and path.suffix != ".py":
        raise PluginError(
            f"plugin {path} is not a Python file", expected="a .py file", found=path.suffix or "no suffix"
        )
    _load_all_builtins()
    names: list[str] = []
    for file in files:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        loaded = _loaded_files.get((file, digest))
        if loaded is not None and _still_registered(loaded[1], loaded[0]):
            names += loaded[1].get(METHODS.kind, [])
            continue
        source = f"file {file} (sha256 {digest[:12]})"
        registered = _load_plugin_file(file, digest, source)
        _loaded_files[(file, digest)] = (source, registered)
        names += registered.get(METHODS.kind, [])
    return names


def _load_plugin_file(file: Path, digest: str, source: str) -> dict[str, list[str]]:
    """Import one plugin file with ``source`` as the origin of what it registers; on any failure, unregister
    everything it registered and raise. Returns registry kind -> names registered."""
    module_name = f"mtbench_plugin_{file.stem}_{digest[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with registering_from(source):
            try:
                spec.loader.exec_module(module)
            except MtbenchError:  # a typed error of a registration (a duplicate name ...): as it is
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {file} failed to import: {exc}", fix="run it with python to see the traceback"
                ) from exc
            _register_all(_infos_of(module), source)
        registered = {kind: names for kind, names in registered_from(source).items() if kind != METHODS.kind}
        if METHODS.from_source(source):  # the registry in use (a test may keep another one alive)
            registered[METHODS.kind] = METHODS.from_source(source)
        if not registered:
            raise PluginError(
                f"plugin {file} defines no method, reader, task kind, task or data set",
                expected="METHOD = MethodInfo(...), a @register_layout reader, or register_kind / register_task / "
                "register_dataset calls",
                found="neither METHOD nor METHODS, and nothing registered on import",
            )
    except BaseException:
        unregister_source(source)
        sys.modules.pop(module_name, None)
        raise
    return registered


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def names_a_path(plugin: str, base: Path = Path(".")) -> bool:
    """Whether a plugin named by text is a file or folder (relative names taken from ``base``), not a module: it
    has a ``/``, ends in ``.py``, or exists."""
    return "/" in plugin or plugin.endswith(".py") or (base / Path(plugin).expanduser()).exists()


def load_plugin(plugin: str | Path) -> list[str]:
    """Load one plugin: a ``.py`` file or a folder of them (`load_plugin_path`), or an importable module named by
    its dotted name (``mypackage.methods``) defining ``METHOD`` or ``METHODS``; returns the method names."""
    text = str(plugin)
    if isinstance(plugin, Path) or names_a_path(text):
        return load_plugin_path(plugin)
    if not _MODULE_NAME.fullmatch(text):
        raise PluginError(
            f"plugin {text!r} is neither a path nor a module name",
            expected="a .py file, a folder of them, or a dotted module name (mypackage.methods)",
            found=text,
        )
    _load_all_builtins()
    source = f"module {text}"
    try:
        with registering_from(source):  # what the module registers on import (readers, kinds, tasks) names it
            try:
                module = importlib.import_module(text)
            except ImportError as exc:
                raise PluginError(
                    f"plugin module {text!r} cannot be imported: {exc}",
                    expected="an installed module (pip install the package providing it)",
                    found="no such module" if isinstance(exc, ModuleNotFoundError) else type(exc).__name__,
                    fix="install the package, or name the plugin's file by its path",
                ) from exc
            infos = _infos_of(module)
            _register_all([i for i in infos if not (i.name in METHODS and METHODS.get(i.name) is i)], source)
        if not infos and not registered_from(source):
            raise PluginError(
                f"plugin module {text} defines no method, reader, task kind, task or data set",
                expected="METHOD = MethodInfo(...), a @register_layout reader, or register_kind / register_task / "
                "register_dataset calls",
                found="neither METHOD nor METHODS, and nothing registered on import",
            )
    except BaseException:
        unregister_source(source)  # a module that failed half way leaves nothing registered
        raise
    return [info.name for info in infos]


def methods(plugins: Iterable[str | Path] = ()) -> Registry[MethodInfo]:
    """The method registry with built-ins, entry points and the named plugins (paths or modules) loaded."""
    load_builtins()
    for plugin in plugins:
        load_plugin(plugin)
    return METHODS
