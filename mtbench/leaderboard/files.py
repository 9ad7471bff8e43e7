"""Building and publishing the leaderboard folder: `build` renders every table in memory and swaps the new set in
atomically; `publish` stores results into the leaderboard's own store with a manifest of their hashes, and
`build` refuses a published result that was changed or added by hand afterwards. `publish` also refuses results
that cannot be compared (`mtbench.leaderboard.rules`) unless told to publish anyway; `build` then marks the table."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from mtbench.errors import LeaderboardError, ResultFileError
from mtbench.leaderboard.model import Group, collect
from mtbench.leaderboard.render import ASSETS, asset_text, render_csv, render_html, render_index, render_markdown
from mtbench.leaderboard.rules import SweepSpec, Table, banner, breaches, index_mark, require_comparable
from mtbench.result import RunResult
from mtbench.results import (
    MANIFEST_NAME,
    checked_hash,
    manifest_path,
    read_manifest,
    read_result,
    require_inside,
    require_results_dir,
    result_path,
    store,
    verify_manifest,
    write_manifest,
)

try:
    import fcntl
except ImportError:  # not on Windows: builds into one folder are then not serialised
    fcntl = None  # type: ignore[assignment]

# --- building and publishing ---------------------------------------------------------------------------

_OWNED = r"README\.md|leaderboard\.(?:css|js)|[^/]*--[^/]*\.(?:md|csv|html)"
GENERATED_FILE = re.compile(_OWNED)  # the files `build` owns in its folder: index, shared assets, tables
LEFTOVER_TEMP = re.compile(rf"\.(?:{_OWNED})\..+\.tmp")  # of an interrupted fallback
STAGING_INFIX = ".staging-"  # staging folder: ``.<out name>.staging-<pid>`` beside the out folder
AT_FDCWD = -100  # <fcntl.h>
RENAME_EXCHANGE = 2  # <linux/fs.h>: swap two existing paths atomically


def build_files(groups: list[Group]) -> dict[str, str]:
    """Every generated file, name -> text: the shared page assets (`ASSETS`), three tables per group, then the
    index README.md (in this order, which `_replace_files` relies on). A group that breaks a rule of
    `mtbench.leaderboard.rules` (published with ``--allow-incomparable``) gets a banner on its Markdown and
    HTML pages and a mark in the index."""
    files: dict[str, str] = {name: asset_text(name) for name in ASSETS}
    marks: dict[str, str] = {}
    for group in groups:
        found = breaches(Table(group))
        if found:
            marks[group.slug] = index_mark(found)
        names = [f"{group.slug}.{suffix}" for suffix in ("md", "csv", "html")]
        for name in names:
            if not GENERATED_FILE.fullmatch(name) or name.startswith("."):  # slugs are made of safe names
                raise LeaderboardError(f"table name {name!r} is not a plain file name", found=name)
        files[names[0]] = render_markdown(group, banner(found))
        files[names[1]] = render_csv(group)
        files[names[2]] = render_html(group, banner(found))
    files["README.md"] = render_index(groups, marks)
    return files


def _require_manifest(results_dir: Path, out_dir: Path) -> None:
    """The leaderboard's own store (``<out>/results``) must have a manifest once it holds results."""
    if Path(results_dir).resolve() != (Path(out_dir) / "results").resolve() or not Path(results_dir).is_dir():
        return
    if read_manifest(results_dir) is None and any(p.name != MANIFEST_NAME for p in Path(results_dir).rglob("*.json")):
        raise ResultFileError(
            manifest_path(results_dir),
            "the leaderboard's results have no manifest",
            expected=f"{MANIFEST_NAME} listing the SHA-256 of every published result",
            found="result files but no manifest (deleted, or results copied in by hand)",
            fix=f"restore it from git; or check the result files and record them as they are with "
            f"`mtbench leaderboard publish --record-existing --out {out_dir}`",
        )


def build(results_dir: Path, out_dir: Path, *, reference: str = "fixed") -> list[Path]:
    """Regenerate every table under ``out_dir`` from ``results_dir``; returns the files written.

    Nothing under ``out_dir`` changes unless everything succeeds: every result is read and checked first
    (`collect` strict: schema, safe names, and the manifest where ``results_dir`` has one; ``<out>/results``
    must have one), every table and the index are rendered in memory, and only then are they swapped in
    (`_install`: the complete old set or the complete new set at every instant, even under kill -9).
    A ``results_dir`` that does not exist is a `ResultFileError`. ``reference``: Δm against stl's mean over
    seeds (``fixed``, the default and what is published) or stl's run of the same seed (``per-seed``).
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    require_results_dir(results_dir)
    _require_manifest(results_dir, out_dir)
    files = build_files(collect(results_dir, strict=True, reference=reference))
    _install(files, out_dir)
    return [out_dir / name for name in files]


_held_locks: set[Path] = set()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` of the folder itself; re-entrant within this process).

    Builds and publishes lock the leaderboard folder's parent, where the staging folder lives: two of them
    never interleave, and a publish never stores a result into a folder that a build is about to swap out.
    """
    key = folder.resolve()
    if fcntl is None or key in _held_locks:
        yield
        return
    handle = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held_locks.add(key)
        yield
    finally:
        _held_locks.discard(key)
        os.close(handle)


class _ExchangeUnsupported(Exception):
    """This system or file system cannot swap two folders atomically."""


def _exchange(first: Path, second: Path) -> None:
    """Swap two existing folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        raise _ExchangeUnsupported("no renameat2 in the C library") from None
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise _ExchangeUnsupported(os.strerror(code))
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def _fsync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_new(folder: Path, files: dict[str, str]) -> None:
    """Write ``files`` into the (fresh) ``folder`` and flush them to disk."""
    for name, text in files.items():
        path = require_inside(folder / name, folder)
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    _fsync(folder)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _mirror_kept(source: Path, target: Path) -> None:
    """Everything in ``source`` except the generated files, into ``target``: hard links (copies where links fail)."""
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        generated = GENERATED_FILE.fullmatch(entry.name) or LEFTOVER_TEMP.fullmatch(entry.name)
        if entry.is_file(follow_symlinks=False) and generated:
            continue
        destination = target / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), destination)
        elif entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, str(destination))


def _replace_files(files: dict[str, str], out_dir: Path) -> None:
    """Fallback without an atomic folder swap: per-file atomic replacement in a safe order.

    The shared page assets and new and changed tables first (each written to a temporary file beside it,
    then ``os.replace``), then the index README.md, then the tables the new index no longer links. The index
    never links a missing file (nor a page its shared assets), but until it finishes a changed table may
    already be new while another is still old.
    """
    from mtbench.data.io import atomic_write_bytes

    for name, text in files.items():
        if name != "README.md":
            atomic_write_bytes(out_dir / name, text.encode("utf-8"))
    atomic_write_bytes(out_dir / "README.md", files["README.md"].encode("utf-8"))
    for stale in out_dir.iterdir():
        if stale.is_file() and GENERATED_FILE.fullmatch(stale.name) and stale.name not in files:
            stale.unlink()


def _install(files: dict[str, str], out_dir: Path) -> None:
    """Make ``files`` the generated files of ``out_dir``: at every instant the old set or the new set, whole.

    Tables keep their names when their numbers change, so replacing them one by one necessarily passes
    through states where the index links some new and some old tables, and a kill there leaves them so.
    Instead the new folder is assembled beside the old one and the two are swapped in one step:

    1. a staging folder ``.<out name>.staging-<pid>`` in the same parent (same file system) receives the
       new tables, the shared page assets and README.md, plus hard links to everything else in ``out_dir``
       (``results/`` …);
    2. ``renameat2(RENAME_EXCHANGE)`` swaps it with ``out_dir`` atomically;
    3. the staging name, which now holds the old folder, is deleted.

    Killed before 2, ``out_dir`` is untouched; after 2 it is the complete new folder; 2 itself is atomic. A
    stale staging folder left by a kill is removed by the next build. A first build (no ``out_dir`` yet)
    renames the staging folder into place. Without the swap (not Linux, or a file system without it)
    this falls back to `_replace_files`, whose guarantee is weaker (see there). Writes into ``out_dir``
    by other programs during a build may land in the old folder; mtbench's own build and publish wait for
    each other (`_folder_lock`).
    """
    target = out_dir.resolve()
    if target.exists() and not target.is_dir():
        raise LeaderboardError(
            f"leaderboard folder {out_dir} is not a folder", expected="a folder", found="a file", fix="check --out"
        )
    if (target / ".git").exists():
        raise LeaderboardError(
            f"refusing to build the leaderboard into {out_dir}: it is the top of a git repository",
            expected="a folder of its own for the leaderboard (default: leaderboard/)",
            found=f"{target / '.git'}",
            fix="pass --out leaderboard (or another folder of its own)",
        )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(parent):
        for stale in parent.glob(f".{target.name}{STAGING_INFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build (the lock excludes live ones)
        staging = parent / f".{target.name}{STAGING_INFIX}{os.getpid()}"
        staging.mkdir()
        try:
            if target.exists():
                shutil.copystat(target, staging)
                _mirror_kept(target, staging)
            _write_new(staging, files)
            if not target.exists():
                os.rename(staging, target)
                _fsync(parent)
                return
            _exchange(staging, target)
        except _ExchangeUnsupported:
            shutil.rmtree(staging, ignore_errors=True)
            for leftover in target.iterdir():
                if LEFTOVER_TEMP.fullmatch(leftover.name):
                    leftover.unlink()
            _replace_files(files, target)
            return
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync(parent)
        shutil.rmtree(staging)  # the old folder, now under the staging name


def publish(
    run_paths: Iterable[Path],
    leaderboard_dir: Path,
    *,
    record_existing: bool = False,
    allow_incomparable: bool = False,
    spec: SweepSpec | None = None,
) -> list[Path]:
    """Copy the result files of the given runs into ``leaderboard_dir/results``, record their hashes, rebuild.

    Everything is checked before anything is written: each input (`read_result`: readable, known schema,
    well-formed, safe method and data-set names), its destination (inside the leaderboard folder), the
    results already published (valid, and matching ``results/MANIFEST.json``), and every table the publish
    would change against the rules of comparison (`rules.require_comparable`: no smoke budget, stl of the
    same seed present, enough seeds per cell, one schema and evaluation protocol). Then the results are stored
    (each atomically), the manifest is rewritten (atomically) with the SHA-256 of each stored result's
    canonical JSON (`content_hash`), and the tables are rebuilt (`build`). A publish interrupted between
    storing and the manifest leaves results that `build` refuses; running the same publish again completes
    it (the files a publish replaces are not checked against the old manifest).

    Args:
        run_paths: run folders (their ``result.json``) or result files.
        leaderboard_dir: the leaderboard folder; results go to its ``results/``.
        record_existing: accept the results already in ``results/`` as they are now and record all of them
            in the manifest: to adopt a store without a manifest, or after editing or removing a result on
            purpose. They are still checked for schema and names, and every table against the rules.
        allow_incomparable: publish even where a table would break a rule; `build` marks such a table
            ``NOT COMPARABLE`` (recomputed from its results at every build).
        spec: the sweep spec the results come from (`mtbench.sweep_spec.load_spec`): a cell of a table it covers
            needs every seed of the spec, rather than `rules.MIN_SEEDS`.

    Returns:
        The stored paths of the given runs.
    """
    leaderboard_dir = Path(leaderboard_dir)
    results_dir = leaderboard_dir / "results"
    sources = [Path(run) / "result.json" if Path(run).is_dir() else Path(run) for run in run_paths]
    if not sources and not record_existing:
        raise LeaderboardError(
            "nothing to publish",
            expected="run folders or result.json files, or --record-existing",
            found="no run",
            fix="`mtbench leaderboard publish runs/<run id>`",
        )
    incoming = [read_result(source) for source in sources]
    parent = leaderboard_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)  # to lock; the folder itself only once every check has passed
    with _folder_lock(parent):
        targets = {}
        for source, result in zip(sources, incoming):
            try:
                target = require_inside(result_path(results_dir, result), leaderboard_dir)
            except ResultFileError as error:
                outside = f"publishing it would write outside {leaderboard_dir}"
                raise ResultFileError(source, outside, **error.details()) from None
            targets[target.relative_to(results_dir).as_posix()] = result
        require_inside(manifest_path(results_dir), leaderboard_dir)
        hashes = _checked_store(results_dir, set(targets), record_existing)
        if not allow_incomparable:
            keys = {result.config_key for result in incoming}
            published = [
                (path, result)
                for path, result in _published(results_dir)
                if path.relative_to(results_dir).as_posix() not in targets and result.config_key not in keys
            ]
            require_comparable(published, list(zip(sources, incoming)), spec=spec, every_table=record_existing)
        stored = []
        for result in incoming:
            path, _ = store(result, results_dir)  # also removes an older-schema file of the same configuration
            hashes[path.relative_to(results_dir).as_posix()] = checked_hash(path)
            stored.append(path)
        hashes = {relative: digest for relative, digest in hashes.items() if (results_dir / relative).is_file()}
        write_manifest(results_dir, hashes)
        build(results_dir, leaderboard_dir)
    return stored


def _published(results_dir: Path) -> list[tuple[Path, RunResult]]:
    """The results in the leaderboard's store (already checked by `_checked_store`), with their paths."""
    if not results_dir.is_dir():
        return []
    return [
        (path, read_result(path))
        for path in sorted(results_dir.rglob("*.json"))
        if path.name != MANIFEST_NAME or path.parent != results_dir
    ]


def _checked_store(results_dir: Path, replaced: set[str], record_existing: bool) -> dict[str, str]:
    """The manifest to extend: the published results minus those about to be ``replaced``, all checked."""
    if not results_dir.is_dir():
        return {}
    kept = [
        (path, checked_hash(path))
        for path in sorted(results_dir.rglob("*.json"))
        if path.name != MANIFEST_NAME or path.parent != results_dir
        if path.relative_to(results_dir).as_posix() not in replaced
    ]
    if record_existing:
        return {path.relative_to(results_dir).as_posix(): digest for path, digest in kept}
    manifest = read_manifest(results_dir)
    if manifest is None:
        if kept:
            raise ResultFileError(
                manifest_path(results_dir),
                "the leaderboard's results have no manifest",
                expected=f"{MANIFEST_NAME} listing the SHA-256 of every published result",
                found=f"{len(kept)} result file(s) but no manifest",
                fix="restore it from git; or check the result files and record them as they are with "
                "`mtbench leaderboard publish --record-existing`",
            )
        return {}
    manifest = {relative: digest for relative, digest in manifest.items() if relative not in replaced}
    verify_manifest(results_dir, manifest, kept)
    return manifest


