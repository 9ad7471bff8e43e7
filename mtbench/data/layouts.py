"""Registry of on-disk layouts (reader classes) and layout detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbench.data.cache import ArrowCacheReader
from mtbench.data.celebamask import CelebaOfficialReader, CelebaParquetReader
from mtbench.data.nyuv2 import MtanReader, NyudMtReader, NyuParquetReader
from mtbench.data.reader import Reader
from mtbench.errors import DataFormatError, DatasetNotFoundError
from mtbench.registry import Registry

LAYOUTS: Registry[type[Reader]] = Registry("layout")
for _reader in (
    MtanReader,
    NyudMtReader,
    NyuParquetReader,
    CelebaOfficialReader,
    CelebaParquetReader,
    ArrowCacheReader,
):
    LAYOUTS.register(_reader.layout, _reader)


def layouts_of(family: str) -> list[type[Reader]]:
    return [cls for _, cls in LAYOUTS.items() if cls.family in (family, "*")]


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
        if cls.detect(root) and (cls is not ArrowCacheReader or ArrowCacheReader.family_of(root) == family):
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
    cls = LAYOUTS.get(layout) if layout else detect_layout(family, Path(root))
    if cls.family not in (family, "*"):
        raise DataFormatError(Path(root), f"layout {cls.layout} belongs to {cls.family}, not {family}")
    accepted = {k: v for k, v in options.items() if v is not None and k in cls.__init__.__code__.co_varnames}
    return cls(root, **accepted)
