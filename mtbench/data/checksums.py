"""Checksums of an Arrow cache's files: recorded when the cache is written, checked when it is opened.

Every file of a cache is recorded as its size and one CRC-32 per 4 MiB chunk (``zlib.crc32``, several GB/s on
one core), in the cache's metadata file; that file carries a CRC-32 of its own content (``meta_crc32``). This
catches accidental damage (flipped bytes, a truncated, lost or stray file) and names the bytes that changed; it
is no defence against deliberate tampering (the source's SHA-256 fingerprint identifies the data set).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mtbench.errors import DataFormatError

ALGORITHM = "crc32"
CHUNK_BYTES = 4 << 20
#: the metadata key holding the CRC-32 of the rest of the metadata
META_CHECK = "meta_crc32"


class CacheIntegrityError(DataFormatError):
    """A cached file differs from what was written (flipped bytes, truncation, a missing or stray file), or a
    cache carries no checksums to verify it by. ``path`` names the file (or the cache folder)."""


@dataclass(frozen=True)
class FileProblem:
    """One file of a cache that does not match its record."""

    path: Path
    problem: str
    expected: str
    found: str

    def error(self, fix: str | None = None, more: int = 0) -> CacheIntegrityError:
        """This problem as the error a reader raises (``more``: how many other damaged files to mention)."""
        extra = f" (and {more} more damaged file(s))" if more else ""
        return CacheIntegrityError(self.path, self.problem + extra, expected=self.expected, found=self.found, fix=fix)


@dataclass(frozen=True)
class CacheCheck:
    """What checking a cache's files found: the problems, and how much was read to find them."""

    root: Path
    problems: tuple[FileProblem, ...]
    files: int
    nbytes: int

    @property
    def ok(self) -> bool:
        return not self.problems


def crc_chunks(
    data: Any, chunk_bytes: int = CHUNK_BYTES, done: Callable[[int, int], None] | None = None
) -> list[str]:
    """CRC-32 (8 hex digits) of each ``chunk_bytes`` chunk of the bytes-like ``data`` (no copy is made);
    ``done(start, length)`` is called after each chunk."""
    view = memoryview(data).cast("B")
    sums = []
    for start in range(0, len(view), chunk_bytes):
        sums.append(f"{zlib.crc32(view[start:start + chunk_bytes]):08x}")
        if done is not None:
            done(start, min(chunk_bytes, len(view) - start))
    return sums


def file_crcs(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, list[str]]:
    """Size and per-chunk CRC-32s of the file at ``path``, read chunk by chunk."""
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    sums, size = [], 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            # fill a whole chunk (readinto may return less before the end of the file)
            filled = 0
            while filled < chunk_bytes and (got := handle.readinto(view[filled:])):
                filled += got
            if not filled:
                break
            sums.append(f"{zlib.crc32(view[:filled]):08x}")
            size += filled
    return size, sums


def record_files(root: Path, skip: str) -> dict[str, Any]:
    """The checksum record of every file under ``root`` except ``skip`` (the metadata file, written last)."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != skip:
            size, sums = file_crcs(path)
            files[relative] = {"size": size, ALGORITHM: sums}
    return {"algorithm": ALGORITHM, "chunk_bytes": CHUNK_BYTES, "files": files}


def meta_check(meta: Mapping[str, Any]) -> str:
    """CRC-32 of the metadata's content: its canonical JSON without the ``meta_crc32`` key itself."""
    content = {key: value for key, value in meta.items() if key != META_CHECK}
    # through JSON and back, so the value written and the value read back are computed from the same objects
    canonical = json.dumps(json.loads(json.dumps(content)), sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(canonical.encode()):08x}"


def compare(path: Path, record: Mapping[str, Any], size: int, sums: list[str], chunk_bytes: int) -> FileProblem | None:
    """The problem of a file of ``size`` bytes with chunk CRC-32s ``sums`` against its ``record``, or None."""
    if size != record["size"]:
        what = "truncated" if size < record["size"] else "longer than when it was written"
        return FileProblem(path, f"damaged cache file: {what}", f"{record['size']} bytes", f"{size} bytes")
    expected = list(record[ALGORITHM])
    bad = [index for index, (ours, theirs) in enumerate(zip(sums, expected)) if ours != theirs]
    if not bad and len(sums) == len(expected):
        return None
    first = bad[0] if bad else min(len(sums), len(expected))
    start, end = first * chunk_bytes, min((first + 1) * chunk_bytes, size) - 1
    return FileProblem(
        path,
        f"damaged cache file: {max(len(bad), 1)} of {len(expected)} chunk(s) of {_size(chunk_bytes)} changed since the "
        f"cache was written, the first at bytes {start}..{end}",
        f"CRC-32 {expected[first] if first < len(expected) else 'none'} of those bytes (recorded when the cache "
        "was written)",
        f"CRC-32 {sums[first] if first < len(sums) else 'none'}",
    )


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes % (1 << 20) == 0 else f"{nbytes} bytes"


def _recorded_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing a recorded name that would leave the cache folder."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise DataFormatError(root, f"the checksum record names a file outside the cache: {relative!r}")
    return root.joinpath(*parts)


def listing_problems(root: Path, record: Mapping[str, Any], skip: str) -> tuple[list[FileProblem], dict[str, Path]]:
    """Missing, stray and wrongly sized files (no content read); and the recorded files that are present with
    their recorded size, by relative name."""
    problems: list[FileProblem] = []
    present: dict[str, Path] = {}
    files: Mapping[str, Any] = record["files"]
    for relative, entry in files.items():
        path = _recorded_path(root, relative)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(FileProblem(path, "missing cache file", f"{entry['size']} bytes", "no file"))
            continue
        problem = compare(path, entry, size, list(entry[ALGORITHM]), record["chunk_bytes"])
        if problem is not None:
            problems.append(problem)
        else:
            present[relative] = path
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != skip and relative not in files:
            problems.append(
                FileProblem(path, "stray file in the cache", "only the files recorded when it was written",
                            f"a file of {path.stat().st_size} bytes")
            )
    return problems, present


def content_problems(
    record: Mapping[str, Any], present: Mapping[str, Path], names: Iterable[str]
) -> tuple[list[FileProblem], int]:
    """Read the files ``names`` (of ``present``) and compare each chunk; the problems and the bytes read."""
    problems, nbytes = [], 0
    for relative in names:
        path = present[relative]
        size, sums = file_crcs(path, record["chunk_bytes"])
        nbytes += size
        problem = compare(path, record["files"][relative], size, sums, record["chunk_bytes"])
        if problem is not None:
            problems.append(problem)
    return problems, nbytes


def check_record(root: Path, meta: Mapping[str, Any], skip: str) -> CacheCheck:
    """Check every file of the cache at ``root`` against the record in its metadata ``meta`` (every problem)."""
    record = meta["checksums"]
    problems, present = listing_problems(root, record, skip)
    found, nbytes = content_problems(record, present, sorted(present))
    return CacheCheck(root, (*problems, *found), len(record["files"]), nbytes + os.path.getsize(root / skip))
