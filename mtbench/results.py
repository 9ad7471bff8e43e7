"""The local results store: one JSON per configuration and seed, written atomically.

A run's *configuration key* is a hash of everything that defines it: method and its resolved config,
data set identity (name and fingerprint), protocol (budget, seen and held-out tasks, steps, network)
and seed. Re-running the same configuration replaces its file instead of adding a second one, so
nothing is double-counted; different configurations never share a file, so concurrent runs never
overwrite each other.

Every result file read for a table is checked first (`validate_result`): a file that is unreadable, of an
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
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from mtbench.data.io import atomic_write_json
from mtbench.errors import ResultFileError, UnsafeNameError
from mtbench.registry import safe_name

SCHEMA_VERSIONS: frozenset[int] = frozenset({1})  # result schemas this mtbench reads (runner writes one of them)
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_VERSION = 1
REWRITE_FIX = (
    "re-run this configuration with `mtbench run`, or restore the file from its run folder "
    "(runs/<run id>/result.json); a file that is not a result does not belong in a results folder"
)


REFERENCE_METHOD = "stl"  #: the method every Δm is measured against (single-task learning)


def default_results_dir() -> Path:
    """``$MTBENCH_RESULTS`` or ``./results``."""
    return Path(os.environ.get("MTBENCH_RESULTS", "results"))


def protocol_signature(payload: dict[str, Any]) -> dict[str, Any]:
    """What two runs must share to be compared (and for one to be the other's reference)."""
    identity = payload["dataset"]["identity"]
    signature = {
        "dataset": payload["dataset"]["name"],
        "fingerprint": identity["fingerprint"],
        "synthetic": payload["dataset"]["synthetic"],
        "protocol": payload["protocol"],
    }
    return json.loads(json.dumps(signature, sort_keys=True))  # tuples and lists compare equal after a JSON trip


def config_key(payload: dict[str, Any]) -> str:
    """SHA-256 of the configuration: protocol signature, method, method config and seed."""
    material = {
        "signature": protocol_signature(payload),
        "method": payload["method"]["name"],
        "config": payload["method"]["config"],
        "seed": payload["seed"],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def result_path(results_dir: Path, payload: dict[str, Any]) -> Path:
    """``results_dir/<data set>/<method>--seed<seed>--<key>.json``; unsafe names raise `UnsafeNameError`."""
    dataset = safe_name("dataset", payload["dataset"]["name"])
    method = safe_name("method", payload["method"]["name"])
    seed = payload["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UnsafeNameError(
            f"seed {seed!r} cannot be used in a file name", expected="an integer seed", found=repr(seed)
        )
    path = Path(results_dir) / dataset / f"{method}--seed{seed}--{config_key(payload)[:16]}.json"
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


def stored_form(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as the store writes it: without ``_``-prefixed (run-local) keys, with its ``config_key``."""
    clean = {k: v for k, v in payload.items() if not k.startswith("_")}
    clean["config_key"] = config_key(clean)
    return clean


def store(payload: dict[str, Any], results_dir: Path) -> tuple[Path, bool]:
    """Write ``payload`` into the store; returns its path and whether it replaced an earlier run of the same key."""
    clean = stored_form(payload)
    path = result_path(results_dir, clean)
    replaced = path.is_file()
    atomic_write_json(path, clean)
    return path, replaced


_MISSING = object()  # a field that is absent (None would be JSON null)


def _describe(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if value is _MISSING:
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind.get(type(value), type(value).__name__)} {text[:60]}{'…' if len(text) > 60 else ''}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _ResultChecker:
    """Field-by-field checks of one result payload; the first problem raises a `ResultFileError`."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def fail(self, field: str, expected: str, value: Any, fix: str = REWRITE_FIX) -> NoReturn:
        problem = "is missing" if value is _MISSING else "has the wrong type or value"
        raise ResultFileError(
            self.path,
            f"not a valid result file: {field!r} {problem}",
            expected=expected,
            found=_describe(value),
            fix=fix,
        )

    def object(self, container: Mapping[str, Any], key: str, field: str, *, optional: bool = False) -> Any:
        value = container.get(key, _MISSING)
        if optional and value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.fail(field, "a JSON object", value)
        return value

    def string(self, container: Mapping[str, Any], key: str, field: str) -> str:
        value = container.get(key, _MISSING)
        if not isinstance(value, str) or not value:
            self.fail(field, "a non-empty string", value)
        return value

    def boolean(self, container: Mapping[str, Any], key: str, field: str) -> bool:
        value = container.get(key, _MISSING)
        if not isinstance(value, bool):
            self.fail(field, "true or false", value)
        return value

    def integer(self, container: Mapping[str, Any], key: str, field: str) -> int:
        value = container.get(key, _MISSING)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(field, "an integer", value)
        return value

    def number(self, container: Mapping[str, Any], key: str, field: str, *, nullable: bool = False) -> Any:
        value = container.get(key, _MISSING)
        if nullable and value is None:
            return None
        if not _is_number(value) or not math.isfinite(value):
            self.fail(field, "a finite number" + (" or null" if nullable else ""), value)
        return value

    def name(self, kind: str, container: Mapping[str, Any], key: str, field: str) -> str:
        value = self.string(container, key, field)
        self.safe(kind, value, field)
        return value

    def safe(self, kind: str, value: Any, field: str) -> None:
        try:
            safe_name(kind, value)
        except UnsafeNameError as error:
            raise ResultFileError(
                self.path,
                f"not a valid result file: {field!r} is not a safe {kind} name",
                expected=error.expected,
                found=error.found,
                fix=f"the {kind} name becomes part of file names: rename the {kind} and re-run it, "
                "or correct the name in this file",
            ) from None

    def names(self, kind: str, container: Mapping[str, Any], key: str, field: str) -> list[str]:
        value = container.get(key, _MISSING)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(field, "a list of strings", value)
        for index, item in enumerate(value):
            self.safe(kind, item, f"{field}[{index}]")
        return value


def validate_result(payload: Any, path: Path | str) -> dict[str, Any]:
    """``payload`` unchanged if it is a well-formed result of a known schema; a `ResultFileError` naming ``path``.

    Checks what the leaderboard and Δm read: ``schema_version`` in `SCHEMA_VERSIONS`; ``run_id``,
    ``created`` (strings); ``seed`` (integer); ``method.name`` (a `safe_name`) and ``method.config`` (object);
    ``dataset.name`` (safe), ``dataset.synthetic`` (boolean), ``dataset.identity.fingerprint`` (string);
    ``protocol`` (object) with ``budget`` and the ``seen``/``unseen`` task lists (safe names: they make up
    table file names); ``tasks``: task -> {``seen`` boolean, ``metrics``: metric -> {``value`` finite number,
    ``higher_is_better`` boolean, ``in_delta_m`` boolean if present}}; ``sparsity``: null or an object whose
    ``group_sparsity`` is a finite number (null is accepted: files from before it was measured) and whose
    ``layers``, if present, list {name, groups, zero_groups}; ``overrides``, ``lambda`` and ``inference``
    objects if present.
    """
    check = _ResultChecker(path)
    if not isinstance(payload, dict):
        check.fail("(top level)", "a JSON object holding one result", payload)
    version = payload.get("schema_version", _MISSING)
    if not isinstance(version, int) or isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        raise ResultFileError(
            path,
            "not a result file this mtbench can read: unknown schema_version",
            expected=f"schema_version {' or '.join(map(str, sorted(SCHEMA_VERSIONS)))}",
            found=_describe(version),
            fix="another mtbench version wrote it: re-run the configuration with this one, or use a matching mtbench",
        )
    check.string(payload, "run_id", "run_id")
    check.string(payload, "created", "created")
    check.integer(payload, "seed", "seed")
    method = check.object(payload, "method", "method")
    check.name("method", method, "name", "method.name")
    check.object(method, "config", "method.config")
    dataset = check.object(payload, "dataset", "dataset")
    check.name("dataset", dataset, "name", "dataset.name")
    check.boolean(dataset, "synthetic", "dataset.synthetic")
    identity = check.object(dataset, "identity", "dataset.identity")
    check.string(identity, "fingerprint", "dataset.identity.fingerprint")
    protocol = check.object(payload, "protocol", "protocol")
    check.name("budget", protocol, "budget", "protocol.budget")
    check.names("task", protocol, "seen", "protocol.seen")
    check.names("task", protocol, "unseen", "protocol.unseen")
    tasks = check.object(payload, "tasks", "tasks")
    if not tasks:
        check.fail("tasks", "at least one task", tasks)
    for task, entry in tasks.items():
        where = f"tasks.{task}"
        if not isinstance(entry, dict):
            check.fail(where, "a JSON object", entry)
        check.boolean(entry, "seen", f"{where}.seen")
        metrics = check.object(entry, "metrics", f"{where}.metrics")
        for metric, value in metrics.items():
            field = f"{where}.metrics.{metric}"
            if not isinstance(value, dict):
                check.fail(field, 'an object {"value": number, "higher_is_better": boolean}', value)
            check.number(value, "value", f"{field}.value")
            check.boolean(value, "higher_is_better", f"{field}.higher_is_better")
            if "in_delta_m" in value:
                check.boolean(value, "in_delta_m", f"{field}.in_delta_m")
    _check_sparsity(check, payload)
    check.object(payload, "overrides", "overrides", optional=True)
    _check_lambda(check, payload)
    _check_inference(check, payload)
    return payload


def _check_sparsity(check: _ResultChecker, payload: dict[str, Any]) -> None:
    sparsity = payload.get("sparsity")
    if sparsity is None:
        return
    if not isinstance(sparsity, dict):
        check.fail("sparsity", "null or a JSON object", sparsity)
    check.number(sparsity, "group_sparsity", "sparsity.group_sparsity", nullable=True)
    layers = sparsity.get("layers")
    if layers is None:
        return
    if not isinstance(layers, list):
        check.fail("sparsity.layers", "a list", layers)
    for index, layer in enumerate(layers):
        field = f"sparsity.layers[{index}]"
        if not isinstance(layer, dict):
            check.fail(field, "a JSON object", layer)
        check.string(layer, "name", f"{field}.name")
        if check.integer(layer, "groups", f"{field}.groups") <= 0:
            check.fail(f"{field}.groups", "a positive integer", layer["groups"])
        check.integer(layer, "zero_groups", f"{field}.zero_groups")


def _check_lambda(check: _ResultChecker, payload: dict[str, Any]) -> None:
    lam = payload.get("lambda")
    if lam is None:
        return
    if not isinstance(lam, dict):
        check.fail("lambda", "null or a JSON object", lam)
    for key in ("start", "end"):
        value = lam.get(key)
        if value is None or (_is_number(value) and math.isfinite(value)):
            continue
        if isinstance(value, list) and all(_is_number(v) and math.isfinite(v) for v in value):
            continue
        check.fail(f"lambda.{key}", "null, a finite number or a list of them (per layer)", value)


def _check_inference(check: _ResultChecker, payload: dict[str, Any]) -> None:
    inference = payload.get("inference")
    if inference is None:
        return
    if not isinstance(inference, dict):
        check.fail("inference", "null or a JSON object", inference)
    for key in ("params", "flops"):
        check.number(check.object(inference, key, f"inference.{key}"), "compact", f"inference.{key}.compact")


def read_result(path: Path) -> dict[str, Any]:
    """The validated payload of one result file; a `ResultFileError` naming it if unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ResultFileError(
            path,
            "no result file here",
            expected="a result.json written by `mtbench run` (or a run folder holding one)",
            found="nothing at this path",
            fix="check the path",
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ResultFileError(
            path,
            "cannot read this result file",
            expected="a readable UTF-8 JSON file",
            found=str(error),
            fix=REWRITE_FIX,
        ) from None
    try:
        payload = json.loads(text)
    except ValueError as error:
        found = "an empty file" if not text.strip() else f"{error} (a truncated or hand-broken file?)"
        raise ResultFileError(
            path, "not valid JSON", expected="one complete JSON object", found=found, fix=REWRITE_FIX
        ) from None
    return validate_result(payload, path)


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


def load_results(results_dir: Path, *, strict: bool = True) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every result file under ``results_dir`` with its validated payload, in path order.

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
    loaded = [(path, read_result(path)) for path in _result_files(results_dir)]
    manifest = read_manifest(results_dir)
    if manifest is not None:
        verify_manifest(results_dir, manifest, loaded)
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
        raise _manifest_error(results_dir, _describe(data))
    for relative, digest in entries.items():
        parts = PurePosixPath(relative).parts
        if not isinstance(digest, str) or PurePosixPath(relative).is_absolute() or ".." in parts or not parts:
            raise _manifest_error(results_dir, f"the entry {relative!r}: {_describe(digest)}")
    return dict(entries)


def verify_manifest(results_dir: Path, manifest: Mapping[str, str], loaded: list[tuple[Path, dict[str, Any]]]) -> None:
    """Every loaded result is listed in ``manifest`` with its hash, and every listed file is there."""
    record = "`mtbench leaderboard publish --record-existing` records the files as they are now (check them first)"
    seen: set[str] = set()
    for path, payload in loaded:
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
        actual = content_hash(payload)
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
    hashes = {
        path.relative_to(results_dir).as_posix(): content_hash(read_result(path)) for path in _result_files(results_dir)
    }
    write_manifest(results_dir, hashes)
    return hashes


def find_reference(results_dir: Path, payload: dict[str, Any], method: str | None = None) -> dict[str, Any] | None:
    """The ``method`` (default stl) result with the same protocol signature and seed, if stored.

    Reads the store non-strictly: a run must not fail over an unrelated broken file in the local store,
    and a broken reference file counts as absent, so the run trains the reference again and its result
    replaces the broken file (same configuration, same path). Tables never read this way.
    """
    method = method or REFERENCE_METHOD
    signature = protocol_signature(payload)
    for _, candidate in load_results(results_dir, strict=False):
        if (
            candidate["method"]["name"] == method
            and candidate["seed"] == payload["seed"]
            and protocol_signature(candidate) == signature
        ):
            return candidate
    return None
