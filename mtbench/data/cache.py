"""Local Arrow cache (Hugging Face ``datasets``) that training reads: ``mtbench data prepare``.

A prepared data set lives in ``$MTBENCH_HOME/data/<dataset>/<fingerprint[:12]>/`` with one
``save_to_disk`` folder per split and ``mtbench-cache.json`` (identity, source, fingerprint, targets).
``$MTBENCH_HOME/data/index.json`` names the latest prepared copy of each data set. A synthetic set
generated for a run is prepared once into ``$MTBENCH_HOME/synth/.arrow/`` (`prepared_synthetic`).

Format 2 (``CACHE_FORMAT``) stores every integer label map in the narrowest integer type holding the
reader's declared value range (`Reader.label_values`: uint8 for 0..255, int8 for -1..127, else wider;
every row is checked and a value that does not fit raises `CacheValueError`), and stores a target the
reader derives from another target (`Reader.derived_targets`, e.g. CelebAMask-HQ's faceseg3 from faceseg19)
only as its source, rebuilding it on read. ``mtbench-cache.json`` records each stored column's type
(``columns``), each target's canonical dtype (``canonical``) and the derivations (``derived``). Caches of
format 1 (label maps as int16, every target a column) are still read.
"""

from __future__ import annotations

import bisect
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtbench.data.io import atomic_write_json, quiet_datasets
from mtbench.data.reader import DERIVATIONS, DatasetIdentity, Reader, derive
from mtbench.errors import ConfigError, DataFormatError, DatasetNotFoundError, MtbenchError

CACHE_META = "mtbench-cache.json"
CACHE_FORMAT = 2
#: integer types a label map may be stored in, narrowest first
_LABEL_TYPES = ("uint8", "int8", "int16", "int32", "int64")
#: the stored type of a label map whose reader declares no value range (format 1 stored every label map so)
_UNDECLARED_LABEL_TYPE = "int16"


class CacheValueError(DataFormatError):
    """A sample's value does not fit the type its cache column stores (it would be changed, never stored)."""


def mtbench_home() -> Path:
    """Root of mtbench's caches: ``$MTBENCH_HOME`` or ``~/.cache/mtbench``."""
    return Path(os.environ.get("MTBENCH_HOME", Path.home() / ".cache" / "mtbench")).expanduser()


def _column_dtype(target: str, stores_uint8_images: bool) -> str:
    """Format 1's stored type of a column (format 2 keeps it for images and float targets)."""
    if target == "image":
        return "uint8" if stores_uint8_images else "float32"
    if target.startswith("semantic") or target.startswith("faceseg"):
        return "int16"
    if target == "edge":
        return "uint8"
    if target.startswith("attr:"):
        return "int8"
    return "float32"


def _label_type(low: int, high: int) -> str:
    """The narrowest integer type holding every value in ``low..high``."""
    for name in _LABEL_TYPES:
        info = np.iinfo(name)
        if info.min <= low and high <= info.max:
            return name
    raise ConfigError("label values beyond int64", found=f"{low}..{high}")


def _stored_dtype(target: str, value: np.ndarray, reader: Reader) -> str:
    """Format 2's stored type of a column, from the reader's canonical array of the first sample."""
    if target == "image":
        return "uint8" if reader.stores_uint8_images else "float32"
    if value.dtype.kind in "iu":  # a label map: the narrowest type of its declared range
        declared = reader.label_values.get(target)
        return _label_type(*declared) if declared is not None else _UNDECLARED_LABEL_TYPE
    return _column_dtype(target, reader.stores_uint8_images)


def _encode(target: str, value: np.ndarray, dtype: str) -> np.ndarray:
    if target == "image" and dtype == "uint8":
        return np.round(value * 255.0).astype(np.uint8)
    return value.astype(dtype)


def _check_fits(reader: Reader, split: str, index: int, target: str, value: np.ndarray, dtype: str) -> None:
    """Raise `CacheValueError` naming the sample if ``value`` would change when stored as ``dtype``."""
    if value.dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(value.min()), int(value.max())
        if info.min <= low and high <= info.max:
            return
        expected = f"values in {info.min}..{info.max}"
        found = f"values in {low}..{high}"
    else:
        if value.dtype == dtype or np.array_equal(value.astype(dtype).astype(value.dtype), value):
            return
        expected, found = f"values that {dtype} holds exactly", "other values (fractions or out of range)"
    declared = reader.label_values.get(target)
    why = f"the reader declares {declared[0]}..{declared[1]}" if declared else "the reader declares no range"
    raise CacheValueError(
        reader.locate(split, index, target),
        f"{target} of sample {reader.sample_ids(split)[index]} ({split}) does not fit the cache's {dtype} column "
        f"({why})",
        expected=expected,
        found=found,
        fix=f"fix the sample, or declare {target}'s true range in {type(reader).__name__}.label_values",
    )


def _canonical_v1(target: str) -> str:
    """Format 1's canonical dtype of a column (format 2 records it)."""
    return "int64" if target.startswith("semantic") or target.startswith("faceseg") else "float32"


def _decode(name: str, value: np.ndarray, stored: str, canonical: str) -> np.ndarray:
    """Stored column -> canonical array (``value`` has the stored type, recorded in the cache's metadata)."""
    if name == "image" and stored == "uint8":  # an 8-bit image: k/255 exactly, as `to_chw_image` makes it
        return value.astype(np.float32) / 255.0
    return value.astype(canonical)


def _derivation_record(how: np.ndarray | str, source: str) -> dict[str, Any]:
    if isinstance(how, str):
        return {"from": source, "function": how}
    return {"from": source, "table": how.tolist(), "dtype": str(how.dtype)}


def _derivation(record: dict[str, Any], root: Path) -> np.ndarray | str:
    if "table" in record:
        return np.asarray(record["table"], dtype=record["dtype"])
    if record.get("function") not in DERIVATIONS:
        raise DataFormatError(
            root / CACHE_META,
            f"unknown derivation {record.get('function')!r}",
            expected=", ".join(DERIVATIONS),
            found=str(record.get("function")),
            fix="read this cache with the mtbench that made it, or re-run `mtbench data prepare`",
        )
    return str(record["function"])


class MappedSplit:
    """One split of a cache, memory-mapped: each column as numpy views on the Arrow files, no copy, no parsing.

    ``save_to_disk`` writes a split as Arrow IPC stream files (named in its ``state.json``) whose columns are
    ``datasets``' fixed-shape array types (nested lists of one primitive type) or plain values; the shapes are
    in the schema's ``huggingface`` metadata. Reading them with pyarrow directly gives the same arrays as
    ``datasets``' numpy formatter, about 0.3 ms faster per column and row, and without importing ``datasets``.
    """

    def __init__(self, folder: Path) -> None:
        import pyarrow as pa

        self.folder = folder
        try:
            state = json.loads((folder / "state.json").read_text())
            files = [folder / entry["filename"] for entry in state["_data_files"]]
            tables = [pa.ipc.open_stream(pa.memory_map(str(file))).read_all() for file in files]
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise DataFormatError(
                folder, f"cannot open the Arrow cache: {exc}", fix="re-run `mtbench data prepare`"
            ) from None
        #: per column, one (rows, *shape) array per record batch; row ``i`` of the split is in batch ``k`` with
        #: ``starts[k] <= i < starts[k + 1]``
        self.columns: dict[str, list[np.ndarray]] = {}
        self.starts: list[int] = [0]
        for table in tables:
            shapes = self._shapes(table, folder)
            for batch in table.to_batches():
                for name, column in zip(batch.schema.names, batch.columns):
                    self.columns.setdefault(name, []).append(self._array(column, shapes[name], name))
                self.starts.append(self.starts[-1] + batch.num_rows)

    @staticmethod
    def _shapes(table: Any, folder: Path) -> dict[str, tuple[int, ...]]:
        """Each column's per-row shape, from the ``huggingface`` features in the schema's metadata."""
        try:
            features = json.loads((table.schema.metadata or {})[b"huggingface"])["info"]["features"]
            return {name: tuple(features[name].get("shape", ())) for name in table.schema.names}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DataFormatError(
                folder,
                f"the Arrow files carry no column shapes ({exc})",
                expected="files written by `mtbench data prepare`",
                fix="re-run `mtbench data prepare`",
            ) from None

    def _array(self, column: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
        import pyarrow as pa

        rows = len(column)
        leaf = column.storage if isinstance(column, pa.ExtensionArray) else column
        nested = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
        while any(is_nested(leaf.type) for is_nested in nested):
            leaf = leaf.flatten()
        try:
            values = leaf.to_numpy(zero_copy_only=True)
        except pa.ArrowException as exc:
            raise DataFormatError(self.folder, f"column {name!r} cannot be read as an array: {exc}",
                                  fix="re-run `mtbench data prepare`") from None
        if values.size != rows * int(np.prod(shape, dtype=np.int64)):
            raise DataFormatError(
                self.folder, f"column {name!r} does not hold {rows} rows of shape {shape}",
                expected=f"{rows * int(np.prod(shape, dtype=np.int64))} values", found=f"{values.size}",
                fix="re-run `mtbench data prepare`",
            )
        return values.reshape(rows, *shape)

    def __reduce__(self) -> tuple[type[MappedSplit], tuple[Path]]:
        """Pickled as its folder (a spawned DataLoader worker maps the files again; nothing is copied)."""
        return MappedSplit, (self.folder,)

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} in {self.folder}")
        batch = bisect.bisect_right(self.starts, index) - 1
        return batch, index - self.starts[batch]

    def row(self, index: int, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Row ``index`` of ``columns`` (views on the mapped file)."""
        batch, local = self._locate(index)
        return {name: self.columns[name][batch][local] for name in columns}

    def rows(self, indices: list[int], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Rows ``indices`` of ``columns``, stacked (copies)."""
        located = [self._locate(int(i)) for i in indices]
        return {
            name: np.stack([self.columns[name][b][j] for b, j in located]) if located
            else np.empty((0, *self.columns[name][0].shape[1:]), self.columns[name][0].dtype)
            for name in columns
        }


class ArrowCacheReader(Reader):
    """Reads a prepared Arrow cache; same canonical samples as the reader it was prepared from."""

    layout: ClassVar[str] = "arrow-cache"
    family: ClassVar[str] = "*"
    title: ClassVar[str] = "mtbench Arrow cache"
    target_sources: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.meta: dict[str, Any] = json.loads((self.root / CACHE_META).read_text())
        self.format = int(self.meta.get("format", 1))
        if self.format > CACHE_FORMAT:
            raise DataFormatError(
                self.root / CACHE_META,
                f"a cache of format {self.format}, made by a newer mtbench",
                expected=f"format {CACHE_FORMAT} or older",
                found=f"format {self.format}",
                fix="upgrade mtbench, or re-run `mtbench data prepare` with this one",
            )
        self.family = self.meta["identity"]["family"]  # type: ignore[misc]
        sources = self.meta["target_sources"]  # a JSON object: key order is not kept, "targets" is
        self.target_sources = {t: sources[t] for t in self.meta["targets"]}  # type: ignore[misc]
        #: the source layout's required splits (caches written before they were recorded: those present)
        self.required_splits = tuple(self.meta.get("required_splits", self.meta["split_order"]))  # type: ignore[misc]
        #: stored column -> its stored type; every name (image and targets) -> its canonical dtype
        self.stored: dict[str, str] = dict(self.meta["columns"])
        self.canonical: dict[str, str] = dict(self.meta.get("canonical") or {n: _canonical_v1(n) for n in self.stored})
        self.derived_targets = {  # type: ignore[misc]
            target: (record["from"], _derivation(record, self.root))
            for target, record in (self.meta.get("derived") or {}).items()
        }
        self._splits: dict[str, MappedSplit] = {}
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

    def _split(self, split: str) -> MappedSplit:
        self.check_split(split)
        if split not in self._splits:
            self._splits[split] = MappedSplit(self.root / split)
        return self._splits[split]

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return list(self.meta["ids"].get(split, []))

    def num_samples(self, split: str) -> int:
        self.check_split(split)
        return len(self.meta["ids"].get(split, []))

    def _columns(self, targets: Any, image: bool) -> tuple[str, ...]:
        """The stored columns that hold the image (if wanted) and ``targets`` (a derived one: its source)."""
        names = (["image"] if image else []) + [self.derived_targets.get(t, (t,))[0] for t in targets]
        return tuple(dict.fromkeys(names))

    def _assemble(self, values: Any, targets: Any, image: bool, batch: bool) -> dict[str, np.ndarray]:
        """Canonical arrays of the image (if wanted) and ``targets`` from the stored columns ``values``."""
        decoded = {
            name: _decode(name, np.asarray(values[name]), self.stored[name], self.canonical[name])
            for name in self._columns(targets, image)
        }
        out = {"image": decoded["image"]} if image else {}
        for target in targets:
            if target in self.derived_targets:
                source, how = self.derived_targets[target]
                value = decoded[source]
                if batch and isinstance(how, str):  # a function of one sample's array
                    derived = np.stack([derive(how, one) for one in value]) if len(value) else value
                else:
                    derived = derive(how, value)
                out[target] = derived.astype(self.canonical[target], copy=False)
            else:
                out[target] = decoded[target]
        return out

    def read(self, split: str, index: int, targets: Any = (), *, image: bool = True) -> dict[str, np.ndarray]:
        """As `Reader.read`; with ``image=False`` the image column is not even selected. (Sizes were checked
        when the cache was prepared: every column has one shape.)"""
        self.require_targets(targets, "the cache")
        targets = tuple(dict.fromkeys(targets))
        row = self._split(split).row(index, self._columns(targets, image))
        return self._assemble(row, targets, image, batch=False)

    def read_batch(
        self, split: str, indices: list[int], targets: tuple[str, ...] = (), *, image: bool = True
    ) -> dict[str, np.ndarray]:
        """Several samples at once, stacked (one Arrow lookup instead of one per sample)."""
        self.require_targets(targets, "the cache")
        targets = tuple(dict.fromkeys(targets))
        rows = self._split(split).rows(indices, self._columns(targets, image))
        return self._assemble(rows, targets, image, batch=True)

    def _read_image(self, split: str, index: int) -> np.ndarray:
        return self.read(split, index)["image"]

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        return self.read(split, index, (target,), image=False)[target]

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
    reader: Reader,
    *,
    cache_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    into: Path | None = None,
    identity: DatasetIdentity | None = None,
) -> PreparedDataset:
    """Convert every sample of ``reader`` (all splits, all targets) into an Arrow cache (format 2).

    The source is fingerprinted (SHA-256 over file contents; ``identity``: the reader's, computed already);
    the cache is built in a scratch folder and moved into place at the end, so an interrupted prepare never
    leaves a half cache. A missing or empty split is refused first (`SplitError`), before anything long
    starts. ``into``: the folder to write instead of ``<cache root>/data/<dataset>/<fingerprint[:12]>``;
    such a cache is not named in the index (`find_prepared`): its caller finds it again, and holds a lock
    that keeps two preparations of it apart (`prepared_synthetic`).

    Every label map row is checked to fit its column's type (`CacheValueError`), and every derived target
    to equal the derivation of its source (`DataFormatError`), so the cache reads back exactly what the
    reader gives.
    """
    import datasets

    quiet_datasets()

    reader.check_splits()
    cache_root = cache_root or mtbench_home()
    identity = identity or reader.identity(content=True)
    target = into or cache_root / "data" / identity.dataset / identity.fingerprint[:12]
    targets = reader.targets()
    derived = {  # derived from a stored target of the reader (not from another derived one)
        t: d
        for t, d in reader.derived_targets.items()
        if t in targets and d[0] in targets and d[0] not in reader.derived_targets
    }
    total = sum(reader.num_samples(s) for s in reader.splits())
    done = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        counts: dict[str, int] = {}
        first = reader.read(reader.splits()[0], 0, targets)
        canonical = {name: str(value.dtype) for name, value in first.items()}
        columns = {name: _stored_dtype(name, value, reader) for name, value in first.items() if name not in derived}
        for split in reader.splits():
            example = first if split == reader.splits()[0] else reader.read(split, 0, targets)
            features = datasets.Features(
                {name: _feature(np.asarray(example[name]), dtype) for name, dtype in columns.items()}
            )

            def rows(split: str = split) -> Iterator[dict[str, np.ndarray]]:
                nonlocal done
                for index in range(reader.num_samples(split)):
                    sample = reader.read(split, index, targets)
                    for name, (source, how) in derived.items():
                        _check_derived(reader, split, index, name, sample[name], derive(how, sample[source]))
                    row = {}
                    for name, dtype in columns.items():
                        value = sample[name]
                        if name != "image":
                            _check_fits(reader, split, index, name, value, dtype)
                        row[name] = _encode(name, value, dtype)
                    yield row
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
            "canonical": canonical,
            "derived": {name: _derivation_record(how, source) for name, (source, how) in derived.items()},
            "splits": counts,
            "split_order": list(counts),
            "required_splits": list(reader.required_splits),
            "ids": {s: reader.sample_ids(s) for s in reader.splits()},
            "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(staging / CACHE_META, meta)
        with _locked(cache_root / "data" / ".lock") if into is None else nullcontext():  # ``into``: the caller's lock
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            if into is None:
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


def _check_derived(reader: Reader, split: str, index: int, target: str, value: np.ndarray, rebuilt: np.ndarray) -> None:
    """The reader's ``target`` must be exactly what its declared derivation makes of its source."""
    if value.dtype != rebuilt.dtype or value.shape != rebuilt.shape or not np.array_equal(value, rebuilt):
        source = reader.derived_targets[target][0]
        raise DataFormatError(
            reader.locate(split, index, target),
            f"{target} of sample {reader.sample_ids(split)[index]} ({split}) is not the derivation of its {source} "
            f"that {type(reader).__name__}.derived_targets declares",
            expected=f"{rebuilt.dtype} {tuple(rebuilt.shape)} equal to the derivation",
            found=f"{value.dtype} {tuple(value.shape)}"
            + ("" if value.shape != rebuilt.shape else f", {int((value != rebuilt).sum())} values differ"),
            fix="fix the reader's derived_targets declaration (a cache stores only the source)",
        )


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


def synthetic_cache_path(generated: Path, fingerprint: str) -> Path:
    """Where the Arrow cache of the generated synthetic set ``generated`` (content ``fingerprint``) lives."""
    return mtbench_home() / "synth" / ".arrow" / f"{Path(generated).name}-{fingerprint[:16]}"


def prepared_synthetic(
    reader: Reader,
    *,
    notice: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The Arrow cache of a generated synthetic set (opened by ``reader``), prepared from it once.

    The cache is keyed by the set's folder name and content fingerprint (`synthetic_cache_path`), so a set
    generated anew, or with other options, never reuses another's cache; its identity is the generated
    set's (fingerprint, synthetic flag, generator manifest), with its layout read as ``arrow-cache(...)``.
    Prepared under a lock and moved into place at the end (`prepare`), so concurrent runs prepare it once
    and an interrupted one leaves nothing behind; the caches of the folder's earlier contents are deleted then.
    Costs one content fingerprint of the set per call (a run computed one anyway); nothing else is read once the
    cache exists.
    """
    identity = reader.identity(content=True)
    if not identity.synthetic:
        raise ConfigError(
            f"{reader.root} is not a generated synthetic set",
            expected="a folder written by `mtbench data synth` (with its manifest)",
            found=f"real {identity.dataset} data ({reader.layout} layout)",
            fix="prepare real data with `mtbench data prepare`",
        )
    path = synthetic_cache_path(reader.root, identity.fingerprint)
    with _locked(path.parent / ".lock"):
        if not _holds(path, identity.fingerprint):
            if notice:
                notice(f"preparing the Arrow cache of {reader.root.name} once into {path}")
            prepare(reader, into=path, identity=identity, progress=progress)
            _drop_stale_synthetic(path, reader.root)
    return path


def _drop_stale_synthetic(kept: Path, generated: Path) -> None:
    """Delete the caches beside ``kept`` prepared from the same folder ``generated`` with another content (the folder
    was regenerated or edited, so nothing can ask for them again). Caches of other folders stay. Called under the
    folder's lock; a process that has a deleted cache's files open keeps reading them (Linux keeps the inode)."""
    source = str(Path(generated).resolve())
    for other in kept.parent.iterdir():
        if other == kept or not other.is_dir() or other.name.startswith("."):
            continue
        meta = _complete_meta(other)  # None: not a cache (or another process's half-moved one): not ours to judge
        if meta is not None and meta.get("source") == source:
            shutil.rmtree(other, ignore_errors=True)


def _complete_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of the complete cache at ``path`` (written last, by `prepare`), or None."""
    try:
        return json.loads((path / CACHE_META).read_text())
    except (OSError, ValueError):
        return None


def _holds(path: Path, fingerprint: str) -> bool:
    """Whether ``path`` is a complete cache of the set with ``fingerprint``."""
    meta = _complete_meta(path)
    return meta is not None and meta.get("identity", {}).get("fingerprint") == fingerprint
