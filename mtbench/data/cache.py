"""Local Arrow cache (Hugging Face ``datasets``) that training reads: ``mtbench data prepare``.

A prepared data set lives in ``$MTBENCH_HOME/data/<dataset>/<fingerprint[:12]>/`` with one
``save_to_disk`` folder per split and ``mtbench-cache.json`` (identity, source, fingerprint, targets).
``$MTBENCH_HOME/data/index.json`` names the latest prepared copy of each data set.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtbench.data.io import atomic_write_json, quiet_datasets
from mtbench.data.reader import DatasetIdentity, Reader
from mtbench.errors import DataFormatError, DatasetNotFoundError, MtbenchError

CACHE_META = "mtbench-cache.json"
CACHE_FORMAT = 1


def mtbench_home() -> Path:
    """Root of mtbench's caches: ``$MTBENCH_HOME`` or ``~/.cache/mtbench``."""
    return Path(os.environ.get("MTBENCH_HOME", Path.home() / ".cache" / "mtbench")).expanduser()


def _column_dtype(target: str, stores_uint8_images: bool) -> str:
    if target == "image":
        return "uint8" if stores_uint8_images else "float32"
    if target.startswith("semantic") or target.startswith("faceseg"):
        return "int16"
    if target == "edge":
        return "uint8"
    if target.startswith("attr:"):
        return "int8"
    return "float32"


def _encode(target: str, value: np.ndarray, dtype: str) -> np.ndarray:
    if target == "image" and dtype == "uint8":
        return np.round(value * 255.0).astype(np.uint8)
    return value.astype(dtype)


def _decode(target: str, value: np.ndarray, stored: str) -> np.ndarray:
    """Stored column -> canonical array. ``datasets``' numpy formatter widens ints to int64, so the
    stored dtype comes from the cache's metadata, not from ``value``."""
    if target == "image":
        return value.astype(np.float32) / 255.0 if stored == "uint8" else value.astype(np.float32)
    if target.startswith("semantic") or target.startswith("faceseg"):
        return value.astype(np.int64)
    return value.astype(np.float32)


class ArrowCacheReader(Reader):
    """Reads a prepared Arrow cache; same canonical samples as the reader it was prepared from."""

    layout: ClassVar[str] = "arrow-cache"
    family: ClassVar[str] = "*"
    title: ClassVar[str] = "mtbench Arrow cache"
    target_sources: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.meta: dict[str, Any] = json.loads((self.root / CACHE_META).read_text())
        self.family = self.meta["identity"]["family"]  # type: ignore[misc]
        sources = self.meta["target_sources"]  # a JSON object: key order is not kept, "targets" is
        self.target_sources = {t: sources[t] for t in self.meta["targets"]}  # type: ignore[misc]
        #: the source layout's required splits (caches written before they were recorded: those present)
        self.required_splits = tuple(self.meta.get("required_splits", self.meta["split_order"]))  # type: ignore[misc]
        self._splits: dict[str, Any] = {}
        self._views: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.check_splits()

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / CACHE_META).is_file()

    @classmethod
    def family_of(cls, root: Path) -> str:
        return json.loads((root / CACHE_META).read_text())["identity"]["family"]

    @classmethod
    def describe(cls) -> str:
        return f"a folder made by `mtbench data prepare` ({CACHE_META} and one folder per split)"

    def splits(self) -> tuple[str, ...]:
        return tuple(self.meta["split_order"])

    def split_source(self, split: str) -> Path:
        return self.root / split

    def _split(self, split: str) -> Any:
        self.check_split(split)
        if split not in self._splits:
            import datasets

            quiet_datasets()

            try:
                self._splits[split] = datasets.load_from_disk(str(self.root / split))
            except Exception as exc:
                raise DataFormatError(
                    self.root / split, f"cannot open the Arrow cache: {exc}", fix="re-run `mtbench data prepare`"
                ) from None
        return self._splits[split]

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return list(self.meta["ids"].get(split, []))

    def num_samples(self, split: str) -> int:
        self.check_split(split)
        return len(self.meta["ids"].get(split, []))

    def _view(self, split: str, columns: tuple[str, ...]) -> Any:
        key = (split, columns)
        if key not in self._views:
            self._views[key] = self._split(split).select_columns(list(columns)).with_format("numpy")
        return self._views[key]

    def read(self, split: str, index: int, targets: Any = ()) -> dict[str, np.ndarray]:
        self.require_targets(targets, "the cache")
        columns = ("image", *targets)
        row = self._view(split, columns)[index]
        return {name: _decode(name, np.asarray(row[name]), self.meta["columns"][name]) for name in columns}

    def read_batch(self, split: str, indices: list[int], targets: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Several samples at once, stacked (one Arrow lookup instead of one per sample)."""
        columns = ("image", *targets)
        rows = self._view(split, columns)[indices]
        return {name: _decode(name, np.asarray(rows[name]), self.meta["columns"][name]) for name in columns}

    def _read_image(self, split: str, index: int) -> np.ndarray:
        return self.read(split, index)["image"]

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        return self.read(split, index, (target,))[target]

    def files(self) -> Iterator[Path]:
        yield from (p for p in self.root.rglob("*") if p.is_file())

    def identity(self, *, fingerprint: str | None = None, content: bool = True) -> DatasetIdentity:
        ident = dict(self.meta["identity"])
        ident["root"] = str(self.root.resolve())
        ident["layout"] = f"arrow-cache({ident['layout']})"
        return DatasetIdentity(**ident)


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    identity: DatasetIdentity
    counts: dict[str, int]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _index_path(cache_root: Path) -> Path:
    return cache_root / "data" / "index.json"


def read_index(cache_root: Path | None = None) -> dict[str, Any]:
    path = _index_path(cache_root or mtbench_home())
    return json.loads(path.read_text()) if path.is_file() else {}


def find_prepared(dataset: str, cache_root: Path | None = None) -> Path | None:
    """The latest prepared cache of ``dataset`` (a registry name), or None."""
    entry = read_index(cache_root).get(dataset)
    if entry and (Path(entry["path"]) / CACHE_META).is_file():
        return Path(entry["path"])
    return None


def prepare(
    reader: Reader, *, cache_root: Path | None = None, progress: Callable[[int, int], None] | None = None
) -> PreparedDataset:
    """Convert every sample of ``reader`` (all splits, all targets) into an Arrow cache.

    The source is fingerprinted (SHA-256 over file contents); the cache is built in a scratch
    folder and moved into place at the end, so an interrupted prepare never leaves a half cache.
    A missing or empty split is refused first (`SplitError`), before anything long starts.
    """
    import datasets

    quiet_datasets()

    reader.check_splits()
    cache_root = cache_root or mtbench_home()
    identity = reader.identity(content=True)
    target = cache_root / "data" / identity.dataset / identity.fingerprint[:12]
    uint8_images = reader.stores_uint8_images
    targets = reader.targets()
    total = sum(reader.num_samples(s) for s in reader.splits())
    done = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        counts: dict[str, int] = {}
        columns = {name: _column_dtype(name, uint8_images) for name in ("image", *targets)}
        for split in reader.splits():
            first = reader.read(split, 0, targets)
            features = datasets.Features(
                {name: _feature(np.asarray(value), _column_dtype(name, uint8_images)) for name, value in first.items()}
            )

            def rows(split: str = split) -> Iterator[dict[str, np.ndarray]]:
                nonlocal done
                for index in range(reader.num_samples(split)):
                    sample = reader.read(split, index, targets)
                    yield {
                        name: _encode(name, value, _column_dtype(name, uint8_images)) for name, value in sample.items()
                    }
                    done += 1
                    if progress:
                        progress(done, total)

            try:
                table = datasets.Dataset.from_generator(
                    rows, features=features, cache_dir=str(staging / ".hf"), fingerprint=uuid.uuid4().hex
                )
            except datasets.exceptions.DatasetGenerationError as exc:
                raise (exc.__cause__ if isinstance(exc.__cause__, MtbenchError) else exc) from None
            table.save_to_disk(str(staging / split))
            counts[split] = reader.num_samples(split)
            del table
        shutil.rmtree(staging / ".hf", ignore_errors=True)
        meta = {
            "format": CACHE_FORMAT,
            "identity": identity.to_dict(),
            "source": str(reader.root.resolve()),
            "target_sources": reader.target_sources,
            "targets": list(targets),
            "columns": columns,
            "splits": counts,
            "split_order": list(counts),
            "required_splits": list(reader.required_splits),
            "ids": {s: reader.sample_ids(s) for s in reader.splits()},
            "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(staging / CACHE_META, meta)
        with _locked(cache_root / "data" / ".lock"):
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            index = read_index(cache_root)
            index[identity.dataset] = {
                "path": str(target),
                "fingerprint": identity.fingerprint,
                "source": meta["source"],
                "layout": identity.layout,
                "synthetic": identity.synthetic,
                "prepared_at": meta["prepared_at"],
            }
            atomic_write_json(_index_path(cache_root), index)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PreparedDataset(target, identity, counts)


def _feature(value: np.ndarray, dtype: str) -> Any:
    import datasets

    if value.ndim == 0:
        return datasets.Value(dtype)
    if value.ndim == 2:
        return datasets.Array2D(value.shape, dtype)
    if value.ndim == 3:
        return datasets.Array3D(value.shape, dtype)
    raise DataFormatError("cache", f"unsupported array rank {value.ndim}")


def require_prepared(dataset: str, cache_root: Path | None = None) -> Path:
    path = find_prepared(dataset, cache_root)
    if path is None:
        raise DatasetNotFoundError(
            f"data set {dataset!r} has not been prepared",
            expected=f"a prepared cache under {cache_root or mtbench_home()}",
            found="none",
            fix=f"run `mtbench data prepare {dataset} --from /path/to/{dataset}` once",
        )
    return path
