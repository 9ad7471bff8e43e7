"""User-facing failures are messages, not tracebacks: an interruption says where training stood and how to
resume, a full disk says what was kept and how much space is needed, a store folder that leads elsewhere is
refused before training."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from mtbench.data.resolve import resolve_data
from mtbench.episodes import TaskView
from mtbench.errors import OutputError, ResultFileError
from mtbench.methods import methods
from mtbench.preflight import plan_tasks
from mtbench.presets import budget
from mtbench.runner import RunRequest, plan
from mtbench.training import TensorSet, TrainContext, TrainingInterrupted, train

TINY = dataclasses.replace(budget("smoke"), name="failure-test", steps=6, log_every=1)


def _context(root: Path) -> tuple[Any, TrainContext]:
    spec, reader = resolve_data(None, root, TINY)
    seen, held_out = plan_tasks(spec, None, ("depth",))
    view = TaskView(reader, spec.train_split, seen, held_out)
    data = TensorSet.load(view.read, min(len(view), 8), [t.target for t in seen], TINY.resolution)
    return spec, TrainContext(TINY, seen, data, 0, torch.device("cpu"))


def _method(ctx: TrainContext) -> Any:
    info = methods().get("ew")
    return info.method(info.config())


def test_ctrl_c_in_training_says_which_step_the_checkpoint_holds(nyu_mtan, tmp_path):
    _, ctx = _context(nyu_mtan)

    def progress(done: int, total: int, info: Any = None) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train(_method(ctx), ctx, progress, checkpoint=tmp_path / "resume.pt", every=2)
    assert isinstance(caught.value, KeyboardInterrupt)  # code that stops on Ctrl-C still stops
    message = str(caught.value)
    assert "interrupted at step 5 of 6" in message
    assert f"{tmp_path / 'resume.pt'} holds step 4" in message and "run the same command to resume" in message


def test_a_full_disk_at_a_checkpoint_is_a_message_that_keeps_the_previous_one(nyu_mtan, tmp_path, monkeypatch):
    from mtbench import training

    _, ctx = _context(nyu_mtan)
    writes = []

    def full_after_first(path: Path, data: bytes) -> None:
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(path)
        path.write_bytes(data)

    monkeypatch.setattr(training, "atomic_write_bytes", full_after_first)
    with pytest.raises(OutputError) as caught:
        train(_method(ctx), ctx, checkpoint=tmp_path / "resume.pt", every=2)
    error = caught.value
    assert "No space left on device" in str(error) and "MiB of free space" in error.expected
    assert "the previous checkpoint (step 2) is intact" in error.fix and "resumes" in error.fix
    assert (tmp_path / "resume.pt").is_file()


def test_a_store_folder_that_links_outside_is_refused_before_training(nyu_mtan, tmp_path):
    store = tmp_path / "results"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store / "nyuv2-synth").symlink_to(elsewhere, target_is_directory=True)
    request = RunRequest(method="ew", data_root=nyu_mtan, unseen=("depth",), budget="smoke", results=store,
                         out=tmp_path / "run")
    with pytest.raises(ResultFileError, match="leads outside"):
        plan(request)  # checked, loaded and trained nothing
    assert not (tmp_path / "run").exists()


def test_the_cli_turns_ctrl_c_into_a_message_and_exit_130(monkeypatch):
    from typer.testing import CliRunner

    from mtbench.cli import app

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mtbench.leaderboard.build", interrupted)
    result = CliRunner().invoke(app, ["leaderboard", "build", "--out", "/nonexistent-mtbench-board"])
    assert result.exit_code == 130, result.output
    assert "stopped:" in result.output and "intact" in result.output and "Traceback" not in result.output


def test_progress_on_a_non_terminal_is_a_plain_line_at_a_steady_interval(capsys):
    from mtbench.cli.progress import plain_progress

    now = [0.0]
    with plain_progress("training", lambda info: f"loss {info['loss']:.2f}", every=30, clock=lambda: now[0]) as update:
        for step in range(1, 101):
            now[0] = step * 1.0  # one step a second
            update(step, 100, {"loss": 1.0 / step})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training:")]
    # the first update, then every 30 s (steps 31, 61, 91), then the last
    assert [line.split()[1] for line in lines] == ["1/100", "31/100", "61/100", "91/100", "100/100"]
    assert "loss 0.03" in lines[1] and "· 1/s ·" in lines[1] and "eta 0:01:09" in lines[1]
    assert "elapsed 0:01:40" in lines[-1] and "eta" not in lines[-1]


def test_results_ls_and_show_browse_a_store_without_opening_json(cli, tmp_path):
    from test_leaderboard import _payload

    from mtbench.result import RunResult
    from mtbench.results import store

    for method, seed in (("ew", 0), ("ew", 1), ("stl", 0)):
        store(RunResult.from_json(_payload(method, seed, 0.4 + 0.01 * seed, 1.0)), tmp_path)
    (tmp_path / "nyuv2-synth" / "broken--seed0--0000000000000000.json").write_text("{not json")
    code, text = cli("results", "ls", "--results", tmp_path)
    assert code == 0, text
    assert "3 result(s)" in text and text.count("nyuv2-synth (synthetic)") == 3
    assert "not a valid result:" in text and "broken--seed0" in text
    code, text = cli("results", "ls", "--results", tmp_path, "--method", "ew")
    assert "2 result(s)" in text
    code, text = cli("results", "show", "ew-1", "--results", tmp_path)
    assert code == 0, text
    assert "seed / schema: 1 / " in text and "semseg" in text and "0.4100" in text
    code, text = cli("results", "show", "ew", "--results", tmp_path)  # two run ids start with "ew"
    assert code == 1 and "no single stored result matches 'ew'" in text and "2 matches" in text


def test_a_resumed_run_counts_its_earlier_sessions_in_both_training_and_total_time(nyu_mtan, tmp_path):
    _, ctx = _context(nyu_mtan)

    def stop_at_4(done: int, total: int, info: Any = None) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(_method(ctx), ctx, stop_at_4, checkpoint=tmp_path / "resume.pt", every=2)
    outcome = train(_method(ctx), ctx, checkpoint=tmp_path / "resume.pt", every=2)
    assert outcome.resumed_from == 4 and 0 < outcome.earlier_seconds < outcome.seconds
