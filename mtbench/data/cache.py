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
(``columns``), each target's canonical dtype (``canonical``) and the derivations (``derived``). A target that
is not a label map is stored as its task kind says (`TaskKind.cache_dtype`: 0/1 edge maps as uint8, binary
attributes as int8, every row checked to be held exactly); each target's kind and the label ranges are recorded
too (``kinds``, ``label_values``; caches written before read them from their source layout's reader). Caches of
format 1 (label maps as int16, every target a column) are still read.

Every file of a cache is checksummed when the cache is written (`mtbench.data.checksums`: size and a CRC-32 per
4 MiB chunk, in ``mtbench-cache.json`` under ``checksums``; the metadata carries a CRC-32 of its own content) and
checked when the cache is opened, before any sample is read: a flipped byte, a truncated, missing or stray file is
a `CacheIntegrityError` naming the file, whose fix is ``mtbench data prepare <dataset> --rebuild`` (`rebuild`: the
cache prepared again from its recorded source beside the old one, then swapped in). A cache written before
checksums were recorded is still read sample by sample, but gives no identity (`ArrowCacheReader.identity`), so
no run records a fingerprint for bytes nobody verified: runs prepare such a synthetic cache again, and a prepared
real one must be rebuilt.
"""

from __future__ import annotations

import bisect
import datetime as dt
import fcntl
import json
import mmap
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

from mtbench.data.checksums import (
    ALGORITHM,
    CHUNK_BYTES,
    META_CHECK,
    CacheCheck,
    CacheIntegrityError,
    FileProblem,
    check_record,
    compare,
    content_problems,
    crc_chunks,
    listing_problems,
    meta_check,
    record_files,
)
from mtbench.data.io import atomic_write_json, quiet_datasets
from mtbench.data.reader import DERIVATIONS, LAYOUTS, SYNTH_MANIFEST, DatasetIdentity, Reader, derive, register_layout
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
    kind = reader.kind_of(target)
    return kind.cache_dtype or kind.dtype


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


def _canonical_v1(stored: str) -> str:
    """Format 1's canonical dtype of a column of ``stored`` type (format 2 records it): format 1 stored label
    maps, and nothing else, as int16."""
    return "int64" if stored == _UNDECLARED_LABEL_TYPE else "float32"


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


def _unmapper(data: Any) -> Callable[[int, int], None] | None:
    """For a memory map: drop each checked chunk from this process's resident pages (they stay in the page cache
    and are mapped again when read), so that checking a cache does not make a process hold all of it."""
    if not isinstance(data, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    return lambda start, length: data.madvise(mmap.MADV_DONTNEED, start, length)


#: the fix of a damaged cache whose data set and cache root are not known where the damage is found
_GENERIC_FIX = "rebuild the cache from its source: `mtbench data prepare DATASET --rebuild`"


def _integrity_error(problems: list[FileProblem], fix: str) -> CacheIntegrityError:
    """The error of a damaged cache: its first damaged file named, the others counted."""
    return problems[0].error(fix, more=len(problems) - 1)


class MappedSplit:
    """One split of a cache, memory-mapped: each column as numpy views on the Arrow files, no copy, no parsing.

    ``save_to_disk`` writes a split as Arrow IPC stream files (named in its ``state.json``) whose columns are
    ``datasets``' fixed-shape array types (nested lists of one primitive type) or plain values; the shapes are
    in the schema's ``huggingface`` metadata. Reading them with pyarrow directly gives the same arrays as
    ``datasets``' numpy formatter, about 0.3 ms faster per column and row, and without importing ``datasets``.

    ``checksums`` (the cache's record of this split's files, by name in the folder, and its chunk size): each file
    is checked against it as it is mapped, the CRC-32s computed over the mapped bytes themselves, so the arrays
    are views on exactly the bytes verified (a mismatch: `CacheIntegrityError`); None: nothing is checked (a
    cache written before checksums). ``fix``: what a user should do about a damaged split.
    """

    def __init__(
        self,
        folder: Path,
        checksums: dict[str, Any] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        fix: str = _GENERIC_FIX,
    ) -> None:
        import pyarrow as pa

        self.folder, self.checksums, self.chunk_bytes, self.fix = folder, checksums, chunk_bytes, fix
        #: bytes whose checksums were verified while mapping, and the names of the files checked
        self.verified_bytes = 0
        self.checked: list[str] = []
        try:
            state_bytes = (folder / "state.json").read_bytes()
            self._verify("state.json", state_bytes)
            state = json.loads(state_bytes)
            tables = []
            for entry in state["_data_files"]:
                with open(folder / entry["filename"], "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                self._verify(entry["filename"], mapped)
                tables.append(pa.ipc.open_stream(pa.py_buffer(mapped)).read_all())  # views on the mapping, no copy
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise DataFormatError(folder, f"cannot open the Arrow cache: {exc}", fix=fix) from None
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
                fix=_GENERIC_FIX,
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
                                  fix=self.fix) from None
        if values.size != rows * int(np.prod(shape, dtype=np.int64)):
            raise DataFormatError(
                self.folder, f"column {name!r} does not hold {rows} rows of shape {shape}",
                expected=f"{rows * int(np.prod(shape, dtype=np.int64))} values", found=f"{values.size}",
                fix=self.fix,
            )
        return values.reshape(rows, *shape)

    def _verify(self, name: str, data: Any) -> None:
        """Refuse the file ``name`` of this split unless ``data`` (its bytes) matches its recorded checksums."""
        if self.checksums is None:
            return
        path = self.folder / name
        record = self.checksums.get(name)
        if record is None:
            problem = FileProblem(path, "stray file in the cache", "a file recorded when it was written", "a file")
        else:
            size = memoryview(data).nbytes
            sums = crc_chunks(data, self.chunk_bytes, _unmapper(data))
            problem = compare(path, record, size, sums, self.chunk_bytes)
            self.verified_bytes += size
            self.checked.append(name)
        if problem is not None:
            raise _integrity_error([problem], self.fix)

    def __reduce__(self) -> tuple[type[MappedSplit], tuple[Any, ...]]:
        """Pickled as its folder and checksums (a spawned DataLoader worker maps and checks the files again; no
        array is copied)."""
        return MappedSplit, (self.folder, self.checksums, self.chunk_bytes, self.fix)

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


@register_layout
class ArrowCacheReader(Reader):
    """Reads a prepared Arrow cache; same canonical samples as the reader it was prepared from."""

    layout: ClassVar[str] = "arrow-cache"
    family: ClassVar[str] = "*"
    title: ClassVar[str] = "mtbench Arrow cache"
    target_sources: ClassVar[dict[str, str]] = {}

    def __init__(self, root: str | Path) -> None:
        """Open the cache at ``root`` and, when it records checksums, verify every file of it (see the module
        docstring); the splits are mapped here, each file checked as it is mapped."""
        super().__init__(root)
        self.meta: dict[str, Any] = _load_meta(self.root)
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
        self.canonical: dict[str, str] = dict(
            self.meta.get("canonical") or {n: _canonical_v1(t) for n, t in self.stored.items()}
        )
        layout = self.meta["identity"]["layout"]  # its source's reader: for caches that record no kinds or ranges
        source_layout = LAYOUTS.get(layout) if layout in LAYOUTS else None
        self.target_kinds = dict(  # type: ignore[misc]
            self.meta.get("kinds") or (source_layout.target_kinds if source_layout else {})
        )
        recorded = self.meta.get("label_values")
        self.label_values = (  # type: ignore[misc]
            {t: (int(low), int(high)) for t, (low, high) in recorded.items()}
            if recorded is not None
            else dict(source_layout.label_values if source_layout else {})
        )
        #: what repairs this cache (named by each integrity error)
        self.fix = rebuild_fix(self.root, self.meta)
        #: every file's checksums; None: a cache written before they were recorded (read, but it gives no identity)
        self.checksums: dict[str, Any] | None = self.meta.get("checksums")
        present: dict[str, Path] = {}
        if self.checksums is not None:
            problems = _record_problems(self.root, self.meta)
            if not problems:
                problems, present = listing_problems(self.root, self.checksums, CACHE_META)
            if problems:
                raise _integrity_error(problems, self.fix)
        self.derived_targets = {  # type: ignore[misc]
            target: (record["from"], _derivation(record, self.root))
            for target, record in (self.meta.get("derived") or {}).items()
        }
        self._splits: dict[str, MappedSplit] = {}
        self.check_splits()
        #: bytes checked against their checksums when the cache was opened
        self.verified_bytes = 0
        if self.checksums is not None:
            self._verify_all(present)

    def _verify_all(self, present: dict[str, Path]) -> None:
        """Map every split (each file checked as it is mapped), then read and check the cache's other files."""
        checked = set()
        for split in self.splits():
            mapped = self._split(split)
            self.verified_bytes += mapped.verified_bytes
            checked.update(f"{split}/{name}" for name in mapped.checked)
        assert self.checksums is not None
        problems, nbytes = content_problems(self.checksums, present, sorted(set(present) - checked))
        if problems:
            raise _integrity_error(problems, self.fix)
        self.verified_bytes += nbytes

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / CACHE_META).is_file()

    @classmethod
    def family_at(cls, root: Path) -> str:
        return _load_meta(root)["identity"]["family"]

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
            files, chunk_bytes = None, CHUNK_BYTES
            if self.checksums is not None:
                prefix = f"{split}/"
                files = {n[len(prefix):]: e for n, e in self.checksums["files"].items() if n.startswith(prefix)}
                chunk_bytes = self.checksums["chunk_bytes"]
            self._splits[split] = MappedSplit(self.root / split, files, chunk_bytes, self.fix)
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
        """The identity recorded when the cache was written (its source's fingerprint). Given only for a cache
        whose files were all verified against their checksums when it was opened, so the fingerprint a run
        records is that of the bytes it reads; a cache without checksums is refused."""
        if self.checksums is None:
            raise CacheIntegrityError(
                self.root / CACHE_META,
                "this cache was written without checksums (by an older mtbench), so its contents cannot be verified "
                "and no run may record its fingerprint",
                expected=f"{CACHE_META} recording every file's checksums",
                found="no checksums",
                fix=self.fix,
            )
        ident = dict(self.meta["identity"])
        ident["root"] = str(self.root.resolve())
        ident["layout"] = f"arrow-cache({ident['layout']})"
        return DatasetIdentity(**ident)


# --- integrity: reading the metadata, checking a cache, naming its repair ---------------------------------------


def _read_meta(root: Path) -> tuple[dict[str, Any] | None, FileProblem | None]:
    """The cache's metadata, or the problem that keeps it from being read."""
    path = root / CACHE_META
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, FileProblem(path, "missing cache metadata", f"the {CACHE_META} written with the cache", "no file")
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        return None, FileProblem(
            path, f"damaged cache metadata: cannot be read ({exc})", "the JSON written with the cache", "other bytes"
        )
    if not isinstance(meta, dict):
        return None, FileProblem(path, "damaged cache metadata", "a JSON object", type(meta).__name__)
    return meta, None


def _load_meta(root: Path) -> dict[str, Any]:
    """The cache's metadata; a `CacheIntegrityError` naming it when it cannot be read."""
    meta, problem = _read_meta(root)
    if problem is not None:
        raise _integrity_error([problem], rebuild_fix(root, None))
    assert meta is not None
    return meta


def _record_problems(root: Path, meta: dict[str, Any]) -> list[FileProblem]:
    """Whether the metadata (with its checksum record) is what was written: its own CRC-32, the record's kind."""
    path = root / CACHE_META
    recorded, actual = meta.get(META_CHECK), meta_check(meta)
    if recorded != actual:
        return [
            FileProblem(
                path,
                "damaged cache metadata: its content differs from when the cache was written",
                f"CRC-32 {recorded} of its content (recorded in it)" if recorded else "a CRC-32 of its content",
                f"CRC-32 {actual}",
            )
        ]
    record = meta["checksums"]
    if not (
        isinstance(record, dict)
        and record.get("algorithm") == ALGORITHM
        and isinstance(record.get("chunk_bytes"), int)
        and record["chunk_bytes"] > 0
        and isinstance(record.get("files"), dict)
    ):
        kind = record.get("algorithm") if isinstance(record, dict) else type(record).__name__
        return [FileProblem(path, "checksums of an unknown kind", f"{ALGORITHM} per chunk", str(kind))]
    return []


def _no_checksums(root: Path) -> FileProblem:
    return FileProblem(
        root / CACHE_META,
        "no checksums: this cache was written by an older mtbench, so its contents cannot be verified",
        "every file's checksums, recorded when the cache was written",
        "none",
    )


def check_cache(root: Path) -> CacheCheck:
    """Every problem of the cache at ``root`` (unreadable metadata, no checksums, a missing, stray, truncated or
    changed file), reading each file whole; never raises for a damaged cache (`mtbench data verify`)."""
    root = Path(root)
    meta, problem = _read_meta(root)
    if problem is None:
        assert meta is not None
        if "checksums" not in meta:
            problem = _no_checksums(root)
        else:
            problems = _record_problems(root, meta)
            if not problems:
                return check_record(root, meta, CACHE_META)
            problem = problems[0]
    return CacheCheck(root, (problem,), 0, 0)


def cache_repair(cache: Path) -> str:
    """What repairs the (damaged) cache at ``cache`` (`rebuild_fix`, its metadata read if it can be)."""
    return rebuild_fix(cache, _read_meta(cache)[0])


def _location(cache: Path) -> tuple[str, Path] | None:
    """Where mtbench keeps the cache at ``cache``: ``("synthetic", cache root)`` for one a run prepared from a
    generated set, ``("prepared", cache root)`` for the one the index names for its data set, else None."""
    cache = Path(cache).resolve()
    if len(cache.parents) < 3:
        return None
    root = cache.parents[2]
    if cache.parent.name == ".arrow" and cache.parent.parent.name == "synth":
        return "synthetic", root
    if cache.parent.parent.name == "data":
        try:
            entry = read_index(root).get(cache.parent.name)
        except DataFormatError:  # an unreadable index finds nothing; `--rebuild` would name it
            return None
        if entry and Path(entry["path"]).resolve() == cache:
            return "prepared", root
    return None


def _generated_of(cache: Path) -> Path:
    """The generated set a run's synthetic cache ``<root>/synth/.arrow/<set>-<fingerprint[:16]>`` was made from."""
    return cache.parent.parent / cache.name.rsplit("-", 1)[0]


def _synthetic_dataset(generated: Path) -> str | None:
    try:
        return str(json.loads((generated / SYNTH_MANIFEST).read_text())["dataset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rebuild_fix(cache: Path, meta: dict[str, Any] | None) -> str:
    """What repairs the cache at ``cache``: the ``mtbench data prepare --rebuild`` command that finds it (its data
    set from ``meta``, else from where it lies); for a cache that command cannot find, what to do instead."""
    location = _location(cache)
    identity = (meta or {}).get("identity")
    dataset = identity.get("dataset") if isinstance(identity, dict) else None
    if location is None:
        source = (meta or {}).get("source") or "SOURCE"
        return (
            f"prepare its source again, `mtbench data prepare {dataset or 'DATASET'} --from {source}`, and use that "
            "cache (`--rebuild` repairs only the caches mtbench itself uses: the prepared one its index names, and "
            "those runs make of synthetic sets)"
        )
    kind, root = location
    if dataset is None:
        dataset = cache.resolve().parent.name if kind == "prepared" else _synthetic_dataset(_generated_of(cache))
    if dataset is None:
        return f"delete {cache} (a run prepares it again from its generated set)"
    option = "" if root == mtbench_home().resolve() else f" --cache {root}"
    return (
        f"run `mtbench data prepare {dataset} --rebuild{option}` (it rebuilds the damaged cache from its source; "
        f"`mtbench data verify {dataset}{option}` lists every damaged file)"
    )


@dataclass(frozen=True)
class CacheEntry:
    """A cache mtbench keeps for a data set, and what it was prepared from (None: not known)."""

    path: Path
    dataset: str
    #: ``"prepared"`` (by `mtbench data prepare`, named in the index) or ``"synthetic"`` (by a run)
    kind: str
    source: Path | None
    layout: str | None
    fingerprint: str | None


def caches_of(dataset: str, cache_root: Path | None = None) -> list[CacheEntry]:
    """The caches of ``dataset`` under ``cache_root``: the prepared one the index names, and those runs prepared
    from generated synthetic sets (found even when their metadata cannot be read)."""
    root = cache_root or mtbench_home()
    found = []
    entry = read_index(root).get(dataset)
    if entry and Path(entry["path"]).is_dir():
        found.append(
            CacheEntry(Path(entry["path"]), dataset, "prepared", Path(entry["source"]), entry.get("layout"),
                       entry.get("fingerprint"))
        )
    arrow = root / "synth" / ".arrow"
    for folder in sorted(arrow.iterdir()) if arrow.is_dir() else ():
        if not folder.is_dir() or folder.name.startswith("."):  # hidden: another process's scratch folder
            continue
        meta, _ = _read_meta(folder)
        identity = (meta or {}).get("identity")
        if isinstance(identity, dict) and isinstance(meta, dict) and "source" in meta:
            found_dataset, source = identity.get("dataset"), Path(meta["source"])
            layout, fingerprint = identity.get("layout"), identity.get("fingerprint")
        else:
            source = _generated_of(folder)
            found_dataset, layout, fingerprint = _synthetic_dataset(source), None, None
        if found_dataset == dataset:
            found.append(CacheEntry(folder, dataset, "synthetic", source, layout, fingerprint))
    return found


def rebuild(
    entry: CacheEntry, family: str, *, progress: Callable[[int, int], None] | None = None
) -> PreparedDataset:
    """Prepare the cache ``entry`` again from its source, beside the old one, then swap it in (`prepare`); the
    old folder stays as it was if anything fails before. Refused when the source is gone or its content changed
    since (a rebuild would then be another data set, not the same cache repaired)."""
    from mtbench.data.layouts import open_reader

    if entry.source is None or not entry.source.is_dir():
        fix = (
            f"delete {entry.path} (a run generates the set and prepares it again)" if entry.kind == "synthetic"
            else f"prepare a copy of {entry.dataset}: `mtbench data prepare {entry.dataset} --from /path/to/it`"
        )
        raise DatasetNotFoundError(
            f"cannot rebuild {entry.path}: its source {entry.source} is gone",
            expected="the folder the cache was prepared from",
            found="nothing there",
            fix=fix,
        )
    reader = open_reader(family, entry.source, entry.layout)
    identity = reader.identity(content=True)
    cache_root = entry.path.resolve().parents[2]
    if entry.kind == "synthetic":
        target = synthetic_cache_path(entry.source, identity.fingerprint or "", cache_root)
    else:
        target = cache_root / "data" / identity.dataset / (identity.fingerprint or "")[:12]
    if target != entry.path.resolve() or (entry.fingerprint is not None and entry.fingerprint != identity.fingerprint):
        raise DataFormatError(
            entry.source,
            f"cannot rebuild {entry.path}: its source has changed since the cache was made",
            expected=f"content fingerprint {entry.fingerprint or entry.path.name}",
            found=f"content fingerprint {identity.fingerprint}",
            fix=(
                f"delete {entry.path} (runs prepare the set's current content on their own)"
                if entry.kind == "synthetic"
                else f"prepare the current content: `mtbench data prepare {entry.dataset} --from {entry.source}`"
            ),
        )
    if entry.kind == "synthetic":
        with _locked(target.parent / ".lock"):  # the lock `prepared_synthetic` holds
            return prepare(reader, into=target, identity=identity, progress=progress)
    return prepare(reader, cache_root=cache_root, identity=identity, progress=progress)


def _swap_in(staging: Path, target: Path) -> None:
    """Move the complete cache ``staging`` to ``target``. An old ``target`` is moved aside first and deleted only
    once the new one is in place (moved back if that fails); a process that has its files open keeps reading them."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    """The index of prepared caches (data set -> its latest cache); a `DataFormatError` naming it if unreadable."""
    path = _index_path(cache_root or mtbench_home())
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        index = exc
    if not isinstance(index, dict):
        raise DataFormatError(
            path,
            f"the index of prepared caches cannot be read ({index})",
            expected="the JSON object `mtbench data prepare` writes",
            found="other bytes",
            fix="delete it and prepare each real data set again (`mtbench data prepare DATASET --from DIR`)",
        )
    return index


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
    the cache is built in a scratch folder beside its target and swapped in at the end (`_swap_in`), so an
    interrupted or failed prepare never leaves a half cache and leaves an older cache there as it was. Every file
    written is checksummed (read back from disk) into the metadata, written last. A missing or empty split is
    refused first (`SplitError`), before anything long starts. ``into``: the folder to write instead of
    ``<cache root>/data/<dataset>/<fingerprint[:12]>``; such a cache is not named in the index (`find_prepared`):
    its caller finds it again, and holds a lock that keeps two preparations of it apart (`prepared_synthetic`).

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
                table = datasets.Dataset.from_generator(  # a fingerprint of the content: rebuilt caches are identical
                    rows, features=features, cache_dir=str(staging / ".hf"),
                    fingerprint=f"{(identity.fingerprint or uuid.uuid4().hex)[:32]}-{split}",
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
            "kinds": {t: reader.kind_of(t).name for t in targets},
            "label_values": {t: list(reader.label_values[t]) for t in targets if t in reader.label_values},
            "columns": columns,
            "canonical": canonical,
            "derived": {name: _derivation_record(how, source) for name, (source, how) in derived.items()},
            "splits": counts,
            "split_order": list(counts),
            "required_splits": list(reader.required_splits),
            "ids": {s: reader.sample_ids(s) for s in reader.splits()},
            "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "checksums": record_files(staging, CACHE_META),  # of the files as written, read back from disk
        }
        meta[META_CHECK] = meta_check(meta)
        atomic_write_json(staging / CACHE_META, meta)
        with _locked(cache_root / "data" / ".lock") if into is None else nullcontext():  # ``into``: the caller's lock
            _swap_in(staging, target)
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


def synthetic_cache_path(generated: Path, fingerprint: str, cache_root: Path | None = None) -> Path:
    """Where the Arrow cache of the generated synthetic set ``generated`` (content ``fingerprint``) lives."""
    return (cache_root or mtbench_home()) / "synth" / ".arrow" / f"{Path(generated).name}-{fingerprint[:16]}"


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
    Costs one content fingerprint of the set per call (a run computed one anyway); nothing else is read here once
    the cache exists (opening it checks its files). A cache there written without checksums is prepared again.
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
        if path.exists():
            # prepare moves a complete cache in at once: a folder here whose metadata is missing or damaged was
            # damaged afterwards, and is refused like a damaged data file, not silently made again
            meta = _load_meta(path)
            if "checksums" in meta and (problems := _record_problems(path, meta)):
                raise _integrity_error(problems, rebuild_fix(path, meta))
        if not _holds(path, identity.fingerprint):
            if notice:
                why = " (the one there was written without checksums by an older mtbench)" if path.exists() else ""
                notice(f"preparing the Arrow cache of {reader.root.name} once into {path}{why}")
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
    """Whether ``path`` is a complete cache of the set with ``fingerprint``, with checksums (one written without
    them cannot be verified: it is prepared again; a damaged one is refused when opened, naming its repair)."""
    meta = _complete_meta(path)
    return meta is not None and meta.get("identity", {}).get("fingerprint") == fingerprint and "checksums" in meta
