"""The on-disk layouts (reader classes) mtbench knows, and layout detection.

Readers register themselves with ``@register_layout`` (`mtbench.data.reader`). They come from three places:

* built-ins: the reader modules named in `BUILTIN_READER_MODULES`;
* installed packages advertising the entry-point group ``mtbench.layouts`` (the entry point's object is a
  reader class, or a module whose readers register themselves when imported);
* plugin files named with ``--plugins`` (`mtbench.methods.load_plugin_path`).

Detection tries a family's layouts in registration order (built-ins first), then the layouts serving every
family (the Arrow cache).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from mtbench.data.reader import LAYOUTS, Reader, register_layout
from mtbench.errors import DataFormatError, DatasetNotFoundError, PluginError
from mtbench.registry import BUILTIN, Registry, registering_from

ENTRY_POINT_GROUP = "mtbench.layouts"
#: the modules whose readers register themselves on import (a new built-in reader in one of them needs no entry here)
BUILTIN_READER_MODULES = ("mtbench.data.nyuv2", "mtbench.data.celebamask", "mtbench.data.cache")
_loaded = False

__all__ = ["LAYOUTS", "detect_layout", "layouts", "layouts_of", "load_builtins", "open_reader", "register_layout"]


def load_builtins() -> None:
    """Register the built-in readers and those of installed entry points (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    with registering_from(BUILTIN):
        for module in BUILTIN_READER_MODULES:
            importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry.dist.name if entry.dist else "unknown package"
        with registering_from(f"entry point {entry.name} ({dist})"):
            try:
                loaded = entry.load()  # a module registers its readers as it is imported
            except Exception as exc:
                raise PluginError(
                    f"entry point {entry.name!r} ({entry.value}) failed to load: {exc}",
                    fix=f"fix or uninstall the package providing it ({dist})",
                ) from exc
            if not isinstance(loaded, ModuleType) and all(cls is not loaded for _, cls in LAYOUTS.items()):
                register_layout(loaded)  # a reader class not decorated in its module


def layouts() -> Registry[type[Reader]]:
    """The layout registry with the built-in and installed readers loaded."""
    load_builtins()
    return LAYOUTS


def layouts_of(family: str) -> list[type[Reader]]:
    """The readers of ``family``, then those serving every family."""
    registered = [cls for _, cls in layouts().items()]
    return [cls for cls in registered if cls.family == family] + [cls for cls in registered if cls.family == "*"]


def detect_layout(family: str, root: Path) -> type[Reader]:
    """The reader class whose layout ``root`` has, among the layouts of ``family``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"no data set folder at {root}",
            expected="an existing folder",
            found="nothing" if not root.exists() else "a file",
            fix="check the path, or create a synthetic stand-in with `mtbench data synth`",
        )
    candidates = layouts_of(family)
    for cls in candidates:
        if cls.detect(root) and cls.family_at(root) == family:
            return cls
    raise DataFormatError(
        root,
        f"no known {family} layout found",
        expected="one of: " + "; ".join(f"{c.layout} ({c.describe()})" for c in candidates),
        found=", ".join(sorted(p.name for p in root.iterdir())[:10]) or "an empty folder",
        fix="point --root at the data set's top folder, or name --layout",
    )


def open_reader(family: str, root: str | Path, layout: str | None = None, **options: Any) -> Reader:
    """Open ``root`` with the reader of ``layout`` (detected when None)."""
    cls = layouts().get(layout) if layout else detect_layout(family, Path(root))
    if cls.family not in (family, "*"):
        raise DataFormatError(Path(root), f"layout {cls.layout} belongs to {cls.family}, not {family}")
    accepted = {k: v for k, v in options.items() if v is not None and k in cls.__init__.__code__.co_varnames}
    return cls(root, **accepted)
