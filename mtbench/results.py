"""The local results store: one JSON per configuration and seed, written atomically.

A run's *configuration key* is a hash of everything that defines it: method and its resolved config,
data set identity (name and fingerprint), protocol (budget, seen and held-out tasks, steps, network)
and seed. Re-running the same configuration replaces its file instead of adding a second one, so
nothing is double-counted; different configurations never share a file, so concurrent runs never
overwrite each other.

Every result file read for a table is checked first (`RunResult.from_json`): a file that is unreadable, of an
unknown schema version or malformed is an error naming the file, never silently left out. A published
store (``leaderboard/results``) also holds ``MANIFEST.json``: the SHA-256 of each published result's
canonical JSON, so that a result changed or added by hand after publishing is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mtbench.data.io import atomic_write_json
from mtbench.errors import ResultFileError, UnsafeNameError
from mtbench.registry import safe_name
from mtbench.result import REFERENCE_METHOD, REWRITE_FIX, RunResult, describe_json, read_json

__all__ = ["REFERENCE_METHOD", "REWRITE_FIX", "RunResult"]  # re-exported: the store's callers name them from here

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_VERSION = 1


def default_results_dir() -> Path:
    """``$MTBENCH_RESULTS`` or ``./results``."""
    return Path(os.environ.get("MTBENCH_RESULTS", "results"))


def result_path(results_dir: Path, result: RunResult) -> Path:
    """``results_dir/<data set>/<method>--seed<seed>--<key>.json``; unsafe names raise `UnsafeNameError`."""
    return key_path(results_dir, result.dataset.name, result.method.name, result.seed, result.config_key)


def key_path(results_dir: Path, dataset: str, method: str, seed: Any, key: str) -> Path:
    """The store path of a configuration given by its parts (see `result_path`)."""
    dataset = safe_name("dataset", dataset)
    method = safe_name("method", method)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UnsafeNameError(
            f"seed {seed!r} cannot be used in a file name", expected="an integer seed", found=repr(seed)
        )
    path = Path(results_dir) / dataset / f"{method}--seed{seed}--{key[:16]}.json"
    require_inside(path, Path(results_dir))
    return path


def require_inside(path: Path, root: Path) -> Path:
    """``path`` if it resolves to a place under ``root``; a `ResultFileError` otherwise (never write outside)."""
    resolved, top = Path(path).resolve(), Path(root).resolve()
    if resolved != top and top not in resolved.parents:
        raise ResultFileError(
            path,
            "this path leads outside the folder it must stay in",
            expected=f"a path under {top}",
            found=str(resolved),
            fix="check the names that make up the path (data set, method) and any symbolic links",
        )
    return path


def store(result: RunResult, results_dir: Path) -> tuple[Path, bool]:
    """Write ``result`` into the store; returns its path and whether it replaced an earlier run of the same key.

    A file of the same configuration written under an older schema (whose file name carries the key that
    schema computed) is replaced too, so a configuration and seed never count twice.
    """
    path = result_path(results_dir, result)
    require_finite(result, path)
    older = [
        other
        for other in path.parent.glob(f"{result.method.name}--seed{result.seed}--*.json")
        if other != path and _same_configuration(other, result)
    ]
    replaced = path.is_file() or bool(older)
    atomic_write_json(path, result.to_json())
    for other in older:
        other.unlink(missing_ok=True)
    return path, replaced


def non_finite_fields(value: Any, where: str = "") -> list[str]:
    """The JSON paths (``tasks/depth/metrics/absErr/value``) of every NaN or infinite number in ``value``."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where} = {value}"]
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in non_finite_fields(item, f"{where}/{key}".lstrip("/"))]
    if isinstance(value, (list, tuple)):
        return [hit for i, item in enumerate(value) for hit in non_finite_fields(item, f"{where}[{i}]")]
    return []


def require_finite(result: RunResult, path: Path) -> None:
    """Refuse a result holding a NaN or an infinity anywhere (a metric, Δm, an option, the history): no such
    result enters a store, where a table would average it."""
    bad = non_finite_fields(result.to_json())
    if bad:
        raise ResultFileError(
            path,
            f"the result of {result.method.name} seed {result.seed} has {len(bad)} non-finite number(s); not stored",
            expected="finite metrics, Δm, options and history",
            found=", ".join(bad[:5]) + (" …" if len(bad) > 5 else ""),
            fix="the run's own folder keeps its result.json to inspect; a NaN metric usually means diverged "
            "training or corrupted data (`mtbench data verify`)",
        )


def _same_configuration(path: Path, result: RunResult) -> bool:
    try:
        return read_result(path).config_key == result.config_key
    except ResultFileError:
        return False


def read_result(path: Path) -> RunResult:
    """The result in one file; a `ResultFileError` naming it if unreadable, malformed or of an unknown schema."""
    return RunResult.read(path)


def checked_hash(path: Path) -> str:
    """`content_hash` of a result file as stored, after checking that it is a valid result."""
    payload = read_json(path)
    RunResult.from_json(payload, path)
    return content_hash(payload)


def _result_files(results_dir: Path) -> list[Path]:
    """Every ``*.json`` under ``results_dir`` except the manifest, in a stable order."""
    return sorted(p for p in Path(results_dir).rglob("*.json") if p != Path(results_dir) / MANIFEST_NAME)


def require_results_dir(results_dir: Path) -> Path:
    """``results_dir`` if it is an existing folder; a `ResultFileError` otherwise."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultFileError(
            results_dir,
            "results folder not found",
            expected="a folder of result files (written by `mtbench run` or `mtbench leaderboard publish`)",
            found="nothing at this path" if not results_dir.exists() else "a file, not a folder",
            fix="check the path given with --results (default: leaderboard/results under --out)",
        )
    return results_dir


def load_results(results_dir: Path, *, strict: bool = True) -> Iterator[tuple[Path, RunResult]]:
    """Every result file under ``results_dir`` with its result, in path order.

    Strict (the default; what the leaderboard uses): a missing folder, an unreadable or invalid file, or,
    where ``MANIFEST.json`` exists, a file that is not listed there or whose content hash differs, raises a
    `ResultFileError` naming it; the error comes before any file is yielded, so a caller never acts on part
    of a store. Non-strict: such files are skipped (never deleted) and a missing folder holds no results;
    only for `find_reference` during a run (see there), which must not fail a run over an unrelated file.
    """
    if not strict:
        for path in _result_files(results_dir) if Path(results_dir).is_dir() else []:
            try:
                yield path, read_result(path)
            except ResultFileError:
                continue
        return
    require_results_dir(results_dir)
    raw = [(path, read_json(path)) for path in _result_files(results_dir)]
    loaded = [(path, RunResult.from_json(payload, path)) for path, payload in raw]
    manifest = read_manifest(results_dir)
    if manifest is not None:
        verify_manifest(results_dir, manifest, [(path, content_hash(payload)) for path, payload in raw])
    yield from loaded


# --- the manifest of a published store -----------------------------------------------------------------------


def content_hash(payload: Mapping[str, Any]) -> str:
    """SHA-256 of a result's canonical JSON (sorted keys, no whitespace, UTF-8): formatting does not count."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_path(results_dir: Path) -> Path:
    return Path(results_dir) / MANIFEST_NAME


def _manifest_error(results_dir: Path, found: str) -> ResultFileError:
    return ResultFileError(
        manifest_path(results_dir),
        "the leaderboard manifest is unreadable",
        expected='{"manifest_version": 1, "results": {"<data set>/<file>.json": "<sha256>", ...}}',
        found=found,
        fix="restore it from git, or re-record it with `mtbench leaderboard publish --record-existing` "
        "after checking the result files",
    )


def read_manifest(results_dir: Path) -> dict[str, str] | None:
    """The manifest's ``relative path -> SHA-256`` map, or None when ``results_dir`` has no manifest."""
    path = manifest_path(results_dir)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _manifest_error(results_dir, str(error)) from None
    entries = data.get("results") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION or not isinstance(entries, dict):
        raise _manifest_error(results_dir, describe_json(data))
    for relative, digest in entries.items():
        parts = PurePosixPath(relative).parts
        if not isinstance(digest, str) or PurePosixPath(relative).is_absolute() or ".." in parts or not parts:
            raise _manifest_error(results_dir, f"the entry {relative!r}: {describe_json(digest)}")
    return dict(entries)


def verify_manifest(results_dir: Path, manifest: Mapping[str, str], hashes: list[tuple[Path, str]]) -> None:
    """Every result file (with the `content_hash` of its JSON as stored) is listed in ``manifest`` with that
    hash, and every listed file is there."""
    record = "`mtbench leaderboard publish --record-existing` records the files as they are now (check them first)"
    seen: set[str] = set()
    for path, actual in hashes:
        relative = path.relative_to(results_dir).as_posix()
        seen.add(relative)
        recorded = manifest.get(relative)
        if recorded is None:
            raise ResultFileError(
                path,
                "this result file was not published: it is not in the leaderboard's manifest",
                expected=f"every result file listed in {manifest_path(results_dir)}",
                found="a file added by hand (or by an interrupted publish)",
                fix=f"publish its run with `mtbench leaderboard publish RUN`, or delete the file; {record}",
            )
        if actual != recorded:
            raise ResultFileError(
                path,
                "this result file differs from the one that was published",
                expected=f"content SHA-256 {recorded} (recorded in {MANIFEST_NAME})",
                found=f"content SHA-256 {actual}: the file was changed after publishing",
                fix=f"restore the published file (e.g. `git checkout -- {path}`) or publish its run again; {record}",
            )
    missing = sorted(set(manifest) - seen)
    if missing:
        raise ResultFileError(
            Path(results_dir) / missing[0],
            "a published result file is missing",
            expected=f"the file listed in {manifest_path(results_dir)}",
            found="nothing at this path",
            fix=f"restore it (e.g. from git); {record}",
        )


def write_manifest(results_dir: Path, hashes: Mapping[str, str]) -> Path:
    """Write the manifest (atomically: readers see the old one or the new one) and return its path."""
    path = manifest_path(results_dir)
    atomic_write_json(
        path,
        {
            "manifest_version": MANIFEST_VERSION,
            "about": "SHA-256 of each published result's canonical JSON (json.dumps(payload, sort_keys=True, "
            "separators=(',', ':'), ensure_ascii=False), UTF-8). `mtbench leaderboard build` refuses a result "
            "that is not listed or does not match. Written by `mtbench leaderboard publish`.",
            "results": dict(sorted(hashes.items())),
        },
    )
    return path


def record_manifest(results_dir: Path) -> dict[str, str]:
    """Validate every result file under ``results_dir`` and record their hashes as the manifest; returns them."""
    require_results_dir(results_dir)
    hashes = {path.relative_to(results_dir).as_posix(): checked_hash(path) for path in _result_files(results_dir)}
    write_manifest(results_dir, hashes)
    return hashes


def find_reference(
    results_dir: Path, signature: Mapping[str, Any], seed: int, method: str = REFERENCE_METHOD
) -> RunResult | None:
    """The ``method`` (default stl) result with this protocol signature and seed, if stored.

    Reads the store non-strictly: a run must not fail over an unrelated broken file in the local store,
    and a broken reference file counts as absent, so the run trains the reference again and its result
    replaces the broken file (same configuration, same path). Tables never read this way.
    """
    for _, candidate in load_results(results_dir, strict=False):
        if candidate.method.name == method and candidate.seed == seed and candidate.signature() == signature:
            return candidate
    return None


# --- browsing a store ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRun:
    """One line of `browse`: where a result is and what it is, without reading its JSON by hand."""

    path: Path
    result: RunResult

    @property
    def variant(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in sorted(self.result.overrides.items()))
        return f"{self.result.method.name} ({options})" if options else self.result.method.name

    @property
    def delta_m(self) -> float | None:
        """The run's Δm against its own stl run (joint where scored so, else adapted seen; all-metric average)."""
        delta = self.result.delta_m
        return None if delta is None else delta.overall(delta.primary)


@dataclass(frozen=True)
class Unreadable:
    """A file of the store that is not a valid result, and why."""

    path: Path
    reason: str


def browse(
    results_dir: Path, *, dataset: str | None = None, method: str | None = None
) -> tuple[list[StoredRun], list[Unreadable]]:
    """Every result of a store (optionally of one data set or method), and every file that is not one."""
    require_results_dir(results_dir)
    runs, unreadable = [], []
    for path in _result_files(results_dir):
        try:
            result = read_result(path)
        except ResultFileError as error:
            unreadable.append(Unreadable(path, error.problem.removeprefix(f"{error.path}: ")))
            continue
        if (dataset is None or result.dataset.name == dataset) and (method is None or result.method.name == method):
            runs.append(StoredRun(path, result))
    runs.sort(key=lambda r: (r.result.dataset.name, r.result.protocol.budget, r.variant, r.result.seed))
    return runs, unreadable


def find_stored(results_dir: Path, which: str) -> StoredRun:
    """The stored result named by a path or a run id (a unique prefix is enough)."""
    candidate = Path(which)
    if candidate.is_file():
        return StoredRun(candidate, read_result(candidate))
    runs, _ = browse(results_dir)
    matches = [run for run in runs if run.result.run_id.startswith(which)]
    if len(matches) != 1:
        raise ResultFileError(
            results_dir,
            f"no single stored result matches {which!r}",
            expected="a result file's path, or a run id (or a unique start of one)",
            found=f"{len(matches)} matches" + "".join(f"; {r.result.run_id}" for r in matches[:5]),
            fix=f"`mtbench results ls --results {results_dir}` lists the run ids",
        )
    return matches[0]
