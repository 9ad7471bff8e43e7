"""Leaderboard safety: results are checked before anything is written, published results cannot be edited
by hand unnoticed, names never leave their folder, Markdown is escaped, and a build killed at any moment
leaves the complete old tables or the complete new ones."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_leaderboard import _payload
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import ResultFileError, UnsafeNameError
from mtbench.leaderboard import ASSETS, build, collect, markdown_text, publish, render_markdown
from mtbench.registry import Registry, safe_name
from mtbench.result import RunResult
from mtbench.results import MANIFEST_NAME, key_path, read_manifest, record_manifest, store

KILL_TRIES = 20


# --- helpers ----------------------------------------------------------------------------------------------


def _group(dataset: str, shift: float = 0.0) -> list[dict]:
    """A small but complete table for ``dataset``: stl, a dense method, a fixed-λ front and a sparse method."""
    payloads = [
        _payload("stl", 0, 0.40 + shift, 1.0),
        _payload("stl", 1, 0.42 + shift, 1.0),
        _payload("ew", 0, 0.44 + shift, 0.9),
        _payload("ew", 1, 0.45 + shift, 0.8),
        _payload("fixed-lambda", 0, 0.38 + shift, 1.1, sparsity=0.2, overrides={"lam": "0.01"}, lam=(0.01, 0.01)),
        _payload("fixed-lambda", 0, 0.30 + shift, 1.3, sparsity=0.6, overrides={"lam": "0.1"}, lam=(0.1, 0.1)),
        _payload("meta-sparsity", 0, 0.36 + shift, 1.2, sparsity=0.5, lam=(0.1, 0.004)),
    ]
    for payload in payloads:
        payload["dataset"]["name"] = dataset
    return payloads


def _publish(board: Path, payloads: list[dict], inbox: Path) -> list[Path]:
    """Write ``payloads`` as result files under ``inbox`` and publish them into ``board``."""
    inbox.mkdir(parents=True, exist_ok=True)
    sources = []
    for index, payload in enumerate(payloads):
        source = inbox / f"{index}.json"
        source.write_text(json.dumps(payload))
        sources.append(source)
    return publish(sources, board, allow_incomparable=True)  # tiny tables: what is tested here is safety


def _tables(folder: Path) -> dict[str, bytes]:
    """The generated files of a leaderboard folder (README.md and the tables), name -> content."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _every_file(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _cli(*args: str) -> tuple[int, str]:
    """Run the mtbench CLI in-process; (exit code, output with line breaks and runs of spaces collapsed)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A published leaderboard folder (results, manifest and tables) with two data sets."""
    folder = tmp_path / "board"
    _publish(folder, _group("nyuv2-synth") + _group("celebamask-synth", 0.1), tmp_path / "inbox")
    return folder


def _stored(board: Path, method: str = "ew") -> Path:
    return sorted((board / "results" / "nyuv2-synth").glob(f"{method}--seed0--*.json"))[0]


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=2))


# --- malformed results: build fails naming the file, tables untouched ---------------------------------------


def _drop_protocol(path: Path) -> None:
    _edit(path, lambda p: p.pop("protocol"))


def _metric_as_string(path: Path) -> None:
    _edit(path, lambda p: p["tasks"]["semseg"]["metrics"]["mIoU"].update(value="0.5"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _schema_99(path: Path) -> None:
    _edit(path, lambda p: p.update(schema_version=99))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_drop_protocol, "'protocol' is missing"),
        (_metric_as_string, "'tasks.semseg.metrics.mIoU.value' has the wrong type or value"),
        (_truncate, "not valid JSON"),
        (_schema_99, "unknown schema_version"),
    ],
    ids=["missing-protocol", "metric-as-string", "truncated-json", "schema-version-99"],
)
def test_malformed_result_fails_the_build_naming_the_file_and_keeps_the_tables(board, breakage, message):
    broken = _stored(board)
    breakage(broken)
    before = _tables(board)
    with pytest.raises(ResultFileError) as caught:
        build(board / "results", board)
    assert caught.value.path == broken and message in str(caught.value)
    code, output = _cli("leaderboard", "build", "--out", str(board))
    assert code == 1 and f"error: {broken}: " in output and message in output and "Traceback" not in output
    assert _tables(board) == before


def test_missing_results_folder_is_an_error_and_keeps_the_tables(board, tmp_path):
    before = _tables(board)
    code, output = _cli("leaderboard", "build", "--results", str(tmp_path / "resluts"), "--out", str(board))
    assert code == 1 and f"error: {tmp_path / 'resluts'}: results folder not found" in output
    assert _tables(board) == before


# --- the manifest: published results edited or added by hand are refused --------------------------------------


def test_publish_records_every_result_in_the_manifest(board):
    manifest = read_manifest(board / "results")
    stored = {p.relative_to(board / "results").as_posix() for p in (board / "results").rglob("*--*.json")}
    assert manifest is not None and set(manifest) == stored and len(stored) == 14


def test_hand_edited_result_after_publishing_is_refused(board):
    edited = _stored(board)
    _edit(edited, lambda p: p["tasks"]["semseg"]["metrics"]["mIoU"].update(value=0.99))
    before = _tables(board)
    code, output = _cli("leaderboard", "build", "--out", str(board))
    assert code == 1 and f"error: {edited}: this result file differs from the one that was published" in output
    assert _tables(board) == before
    # a plain results store without a manifest may be tabulated as it is
    plain = board.parent / "plain"
    shutil.copytree(board / "results", plain)
    (plain / MANIFEST_NAME).unlink()
    assert any(p.suffix == ".md" for p in build(plain, board.parent / "elsewhere"))


def test_result_added_by_hand_and_deleted_manifest_are_refused(board):
    added = board / "results" / "nyuv2-synth" / "extra--seed0--0000000000000000.json"
    shutil.copy(_stored(board), added)
    with pytest.raises(ResultFileError, match="not in the leaderboard's manifest") as caught:
        build(board / "results", board)
    assert caught.value.path == added
    added.unlink()
    (board / "results" / MANIFEST_NAME).unlink()
    with pytest.raises(ResultFileError, match="have no manifest"):
        build(board / "results", board)
    record_manifest(board / "results")  # what `publish --record-existing` does
    build(board / "results", board)


# --- names: nothing is written outside the leaderboard folder ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "name"),
    [("dataset", "../../../x"), ("dataset", "nyu/v2"), ("method", "../../../x"), ("method", "evil/method")],
)
def test_unsafe_names_are_refused_and_nothing_is_written(board, tmp_path, field, name):
    payload = _payload("ew", 3, 0.5, 1.0)
    payload[field]["name"] = name
    source = tmp_path / "inbox" / "unsafe.json"
    source.write_text(json.dumps(payload))
    before = _every_file(tmp_path)
    code, output = _cli("leaderboard", "publish", str(source), "--out", str(board))
    assert code == 1 and f"error: {source}: " in output and f"'{field}.name' is not a safe {field} name" in output
    assert _every_file(tmp_path) == before
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "x").exists()
    with pytest.raises(UnsafeNameError):
        key_path(board / "results", payload["dataset"]["name"], payload["method"]["name"], 3, "0" * 64)


def test_method_registry_accepts_only_safe_names():
    methods: Registry[int] = Registry("method")
    methods.register("fixed-lambda", 1)
    for name in ("../../../x", "a/b", "Upper", ".hidden", "a..b", "x" * 65, ""):
        with pytest.raises(UnsafeNameError, match="cannot be used in a file or folder name"):
            methods.register(name, 2)
    assert safe_name("method", "meta-sparsity_v2.1") == "meta-sparsity_v2.1"
    Registry("task").register("nyuv2/depth", 3)  # names that never become paths keep their form


def test_publish_of_missing_empty_or_truncated_input_names_it(board, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(_payload("ew", 3, 0.5, 1.0))[:150])
    for source, message in (
        (tmp_path / "runs" / "missing", "no result file here"),
        (empty, "not valid JSON"),
        (truncated, "not valid JSON"),
    ):
        expected = source / "result.json" if source.name == "missing" else source
        code, output = _cli("leaderboard", "publish", str(source), "--out", str(board))
        assert code == 1 and f"error: {source}" in output and message in output, output
        assert str(expected.parent) in output


# --- Markdown escaping -------------------------------------------------------------------------------------


def test_markdown_escapes_what_comes_from_results(tmp_path):
    assert markdown_text("a|b") == "a\\|b" and markdown_text("fixed-lambda (lam=0.01)") == "fixed-lambda (lam=0.01)"
    assert markdown_text("`x` *y* _z_ <b> [l] two\nlines") == "\\`x\\` \\*y\\* \\_z\\_ \\<b\\> \\[l\\] two lines"
    results = tmp_path / "r"
    for payload in (
        _payload("stl", 0, 0.40, 1.0),
        _payload("ew", 0, 0.44, 0.9, overrides={"tag": "a|b <i>"}),
        _payload("fixed-lambda", 0, 0.38, 1.1, overrides={"lam": "0.01"}),
    ):
        store(RunResult.from_json(payload), results)
    (group,) = collect(results)
    markdown = render_markdown(group)
    row = next(line for line in markdown.splitlines() if "ew (tag=" in line)
    assert "| ew (tag=a\\|b \\<i\\>) |" in row
    header = next(line for line in markdown.splitlines() if line.startswith("| rank |"))
    assert len(re.split(r"(?<!\\)\|", row)) == len(header.split("|"))  # the pipe did not add a column
    assert "| fixed-lambda (lam=0.01) |" in markdown


# --- the shared page assets -------------------------------------------------------------------------------


def test_assets_are_replaced_with_the_tables_and_written_before_them_without_the_swap(board, monkeypatch):
    from mtbench.data import io as data_io
    from mtbench.leaderboard import files as leaderboard

    (board / "leaderboard.js").write_text("stale")  # e.g. an older version: the build owns and replaces it
    (board / "notes.txt").write_text("mine")  # not generated: kept
    build(board / "results", board)  # the atomic swap
    assert (board / "leaderboard.js").read_text() == leaderboard.asset_text("leaderboard.js")
    assert (board / "notes.txt").read_text() == "mine"

    def unsupported(first: Path, second: Path) -> None:
        raise leaderboard._ExchangeUnsupported("not here")

    order: list[str] = []
    write = data_io.atomic_write_bytes

    def recording(path: Path, data: bytes) -> None:
        order.append(Path(path).name)
        write(path, data)

    monkeypatch.setattr(leaderboard, "_exchange", unsupported)
    monkeypatch.setattr(data_io, "atomic_write_bytes", recording)
    for name in ASSETS:
        (board / name).unlink()  # as in a folder built before the pages shared them
    build(board / "results", board)  # the per-file fallback: assets first, so no page links a missing one
    pages = [index for index, name in enumerate(order) if name.endswith(".html")]
    assets = [order.index(name) for name in ASSETS]
    assert pages and max(assets) < min(pages) and order[-1] == "README.md"
    for name in ASSETS:
        assert (board / name).read_text() == leaderboard.asset_text(name)


# --- kill -9 during a build --------------------------------------------------------------------------------

#: A process that imports the command line once, then forks one child per build it is sent: each child runs
#: ``python -m mtbench ARGS`` (`mtbench.cli.main` with that argv) in its own process, which the test kills
#: with SIGKILL. Forking an imported process keeps the kill window on the build itself: a fresh
#: ``python -m mtbench`` spends most of its life importing torch (seconds on a loaded 2-core machine), where
#: a kill proves nothing, and 20 such starts were most of this module's time.
_FORK_SERVER = r"""
import json, os, sys, traceback
from mtbench.cli import main
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = ["mtbench", *job["args"]]
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else int(done.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Fork:
    """One ``mtbench`` command running in a child of `Forks`: a `subprocess.Popen`-like handle."""

    def __init__(self, pid: int, events: queue.Queue, stderr: Path) -> None:
        self.pid, self._events, self._stderr, self.returncode = pid, events, stderr, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self._events.get_nowait()["returncode"]
            except queue.Empty:
                pass
        return self.returncode

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            self.returncode = self._events.get(timeout=timeout)["returncode"]
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may end (and be reaped) in between
                os.kill(self.pid, signal.SIGKILL)

    def stderr(self) -> str:
        return self._stderr.read_text()


class Forks:
    """The fork server (`_FORK_SERVER`) started in ``cwd``; `start` runs one command, one at a time."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.process = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd
        )
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert "ready" in self.events.get(timeout=300), "the fork server did not start"
        self.count = 0

    def _read(self) -> None:
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def start(self, *args: str) -> Fork:
        self.count += 1
        stderr = self.cwd / f"fork-{self.count}.stderr"
        self.process.stdin.write(json.dumps({"args": list(args), "cwd": str(self.cwd), "stderr": str(stderr)}) + "\n")
        self.process.stdin.flush()
        return Fork(self.events.get(timeout=60)["pid"], self.events, stderr)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


@pytest.fixture
def forks(tmp_path: Path):
    server = Forks(tmp_path)
    yield server
    server.close()


def _linked(readme: str) -> set[str]:
    return set(re.findall(r"\]\(([^)]+)\)", readme))


@pytest.mark.slow
def test_build_killed_at_any_moment_leaves_the_old_or_the_new_tables(tmp_path, forks):
    datasets = [f"set-{i}" for i in range(6)]
    prepared = tmp_path / "prepared" / "board"
    _publish(prepared, [p for d in datasets[:5] for p in _group(d)], tmp_path / "inbox")  # old: sets 0-4
    old = _tables(prepared)
    shutil.rmtree(prepared / "results")  # new: sets 1-5, every number shifted; results differ from tables
    for payload in (p for d in datasets[1:] for p in _group(d, 0.05)):
        store(RunResult.from_json(payload), prepared / "results")
    record_manifest(prepared / "results")
    build(prepared / "results", tmp_path / "expected")
    new = _tables(tmp_path / "expected")
    shared = (set(old) & set(new)) - {"README.md", *ASSETS}  # the shared page assets are the same in both
    assert shared and all(old[n] != new[n] for n in shared) and set(old) != set(new)

    def start(index: int) -> tuple[Path, Fork]:
        folder = tmp_path / f"try-{index}" / "board"
        shutil.copytree(prepared, folder)
        return folder, forks.start("leaderboard", "build", "--out", str(folder))

    # Measure first: the whole duration, and when the build first changes anything on disk (the window
    # that matters). Half the kills are spread over the whole run, half over that window.
    folder, process = start(-1)
    began = time.perf_counter()

    def listing() -> tuple[list[str], list[tuple[str, int]]]:
        return sorted(os.listdir(folder.parent)), sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(folder))

    initial, first_change = listing(), None
    while process.poll() is None:
        if first_change is None and listing() != initial:
            first_change = time.perf_counter() - began
        time.sleep(0.0005)
    duration = time.perf_counter() - began
    assert process.returncode == 0, process.stderr()
    assert _tables(folder) == new
    first_change = duration / 2 if first_change is None else first_change

    rng = random.Random(20260101)
    half = KILL_TRIES // 2
    delays = [(i + rng.random()) / half * duration for i in range(half)]
    delays += [first_change + (i + rng.random()) / half * (duration - first_change) for i in range(KILL_TRIES - half)]
    outcomes = []
    for index, delay in enumerate(delays):
        folder, process = start(index)
        time.sleep(delay)
        process.kill()
        process.wait(timeout=60)
        tables = _tables(folder)
        readme = tables.get("README.md", b"").decode()
        assert readme in (old["README.md"].decode(), new["README.md"].decode()), f"try {index}: README is neither"
        expected = old if readme == old["README.md"].decode() else new
        for name in _linked(readme):
            assert name in tables, f"try {index} (kill after {delay:.3f} s): README links missing {name}"
            assert tables[name] == expected[name], f"try {index} (kill after {delay:.3f} s): {name} is mixed"
        assert tables == expected, f"try {index} (kill after {delay:.3f} s): not exactly the old or the new set"
        outcomes.append(("old" if expected is old else "new", process.returncode))
    assert any(code == -signal.SIGKILL for _, code in outcomes), outcomes  # some kills did land mid-run

    build(folder / "results", folder)  # the next build completes and clears what a kill left behind
    assert _tables(folder) == new
    assert not [p for p in folder.parent.iterdir() if p.name != "board"]
    assert os.listdir(folder / "results")
