"""Hugging Face parquet mirrors read from local shards with ``datasets`` (no download)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtbench.data.io import quiet_datasets
from mtbench.data.reader import Reader
from mtbench.errors import DataFormatError


def parquet_split_files(root: Path) -> dict[str, list[Path]]:
    """Parquet shards per canonical split: ``**/{split}-*.parquet`` or ``**/{split}/*.parquet``."""
    canonical = {"train": "train", "val": "val", "validation": "val", "test": "test"}
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        match = re.match(r"([a-z]+)-\d+-of-\d+", path.stem)
        name = match.group(1) if match else path.parent.name
        if name in canonical:
            found.setdefault(canonical[name], []).append(path)
    return found


class ParquetTable:
    """Lazy access to one split's parquet shards through Hugging Face ``datasets`` (local files only)."""

    def __init__(self, files: list[Path], cache_dir: Path | None = None) -> None:
        self.files = files
        self.cache_dir = cache_dir
        self._formatted: dict[tuple[str, ...], Any] = {}

    @cached_property
    def dataset(self) -> Any:
        import datasets

        quiet_datasets()

        try:
            return datasets.Dataset.from_parquet(
                [str(f) for f in self.files], cache_dir=str(self.cache_dir) if self.cache_dir else None
            )
        except Exception as exc:
            raise DataFormatError(
                self.files[0].parent,
                f"cannot read parquet shards: {exc}",
                expected="readable parquet files",
                found=", ".join(f.name for f in self.files),
                fix="re-copy the shards from the mirror",
            ) from None

    def row(self, index: int, columns: tuple[str, ...]) -> dict[str, Any]:
        if columns not in self._formatted:
            missing = [c for c in columns if c not in self.dataset.column_names]
            if missing:
                raise DataFormatError(
                    self.files[0],
                    f"parquet shards lack column {missing[0]!r}",
                    expected=", ".join(columns),
                    found=", ".join(self.dataset.column_names),
                )
            self._formatted[columns] = self.dataset.select_columns(list(columns)).with_format("numpy")
        return self._formatted[columns][index]

    @cached_property
    def num_rows(self) -> int:
        """Rows of all shards, from the parquet footers (no data read, no Arrow cache written)."""
        import pyarrow.parquet as pq

        total = 0
        for path in self.files:
            try:
                total += pq.read_metadata(path).num_rows
            except Exception as exc:
                raise DataFormatError(
                    path,
                    f"cannot read the parquet shard: {exc}",
                    expected="a readable parquet file",
                    found="a truncated or corrupt file",
                    fix="re-copy the shards from the mirror",
                ) from None
        return total

    def __len__(self) -> int:
        return self.num_rows


class ParquetReader(Reader):
    """Shared part of the parquet-mirror readers: one `ParquetTable` per split, rows as samples."""

    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    required_splits: ClassVar[tuple[str, ...]] = SPLITS
    #: how the mirror spells a split in its shard names, where not the canonical name
    SHARD_NAMES: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path, cache_dir: Path | None = None) -> None:
        super().__init__(root)
        self._tables = {
            split: ParquetTable(files, cache_dir)
            for split, files in parquet_split_files(self.root).items()
            if split in self.SPLITS
        }
        self.check_splits()

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.SPLITS if s in self._tables)

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return [str(i) for i in range(len(self._tables[split]))]

    def locate(self, split: str, index: int, target: str) -> str:
        return f"{self._tables[split].files[0].parent} ({split} shards, row {index}, {target})"

    def split_source(self, split: str) -> Path:
        table = self._tables.get(split)
        if table is not None:
            return table.files[0]
        return self.root / "data" / f"{self.SHARD_NAMES.get(split, split)}-*.parquet"

    def _cell(self, split: str, index: int, column: str) -> tuple[str, np.ndarray]:
        """``(where, value)`` of one cell; ``where`` names the shards, row and column for error messages."""
        where = f"{self._tables[split].files[0].parent} ({split} shards, row {index}, column {column})"
        return where, np.asarray(self._tables[split].row(index, (column,))[column])

    def files(self) -> Iterator[Path]:
        for table in self._tables.values():
            yield from table.files
