"""Training checkpoints: an interrupted run resumed from its checkpoint ends exactly as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from mtbench import presets
from mtbench.data.resolve import resolve_data
from mtbench.episodes import TaskView
from mtbench.methods import methods
from mtbench.overrides import build_config
from mtbench.preflight import plan_tasks
from mtbench.presets import Budget, budget
from mtbench.protocol import score
from mtbench.recipe import RESUME_FILE
from mtbench.runner import RunRequest, execute
from mtbench.training import (
    CHECKPOINT_EVERY,
    CheckpointError,
    Method,
    TensorSet,
    TrainContext,
    TrainOutcome,
    train,
)

pytestmark = [pytest.mark.slow]

ALL_METHODS = sorted(methods().names())
#: 8 steps, every step logged; with checkpoints every 3 steps: at 3, 6 and 8 (the last step).
TINY: Budget = dataclasses.replace(budget("smoke"), name="resume-test", steps=8, log_every=1)


class Interrupted(Exception):
    """Stands in for a kill: raised from the progress callback, after the step's checkpoint was written."""


def _interrupt_at(step: int) -> Callable[..., None]:
    def progress(done: int, total: int, info: dict[str, Any] | None = None) -> None:
        if done == step:
            raise Interrupted(step)

    return progress


# --- in-process: train() on every registered method ---------------------------------------------------


@pytest.fixture(scope="module")
def nyu_data(nyu_mtan: Path) -> tuple[Any, Any, list, list]:
    spec, reader = resolve_data(None, nyu_mtan, TINY)
    seen, held_out = plan_tasks(spec, None, ("depth",))
    return spec, reader, seen, held_out


def _context(nyu_data: tuple[Any, Any, list, list], plan: Budget = TINY, seed: int = 0) -> TrainContext:
    spec, reader, seen, held_out = nyu_data
    view = TaskView(reader, spec.train_split, seen, held_out)
    count = min(len(view), plan.max_train_samples or len(view))
    data = TensorSet.load(view.read, count, [t.target for t in seen], plan.resolution)
    return TrainContext(plan, seen, data, seed, torch.device("cpu"))


def _final_metrics(method: Method, ctx: TrainContext, nyu_data: tuple[Any, Any, list, list]) -> dict[str, dict]:
    spec, reader, seen, held_out = nyu_data

    def load(task: Any, split: str) -> TensorSet:
        name = spec.train_split if split in ("train", "val") else spec.test_split
        return TensorSet.load(lambda i, targets: reader.read(name, i, targets), reader.num_samples(name), [task.target])

    order = [(t, True) for t in seen] + [(t, False) for t in held_out]
    scored = score(method, ctx, order, load).tasks
    return {r.task.name: (r.adapted.metrics, r.joint.metrics if r.joint else None) for r in scored}


def _train(name: str, ctx: TrainContext, **kwargs: Any) -> tuple[Method, TrainOutcome]:
    """Train method ``name``, or ``name:key=value`` with that option (e.g. second-order meta-sparsity)."""
    name, _, option = name.partition(":")
    info = methods().get(name)
    method = info.method(build_config(info.config, dict([option.split("=", 1)]) if option else {}))
    torch.manual_seed(ctx.seed)
    return method, train(method, ctx, **kwargs)


def _assert_same_state(state_a: dict[str, Any], state_b: dict[str, Any]) -> None:
    """Two `Method.state_dict` results hold exactly the same tensors (nested state dicts included)."""
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        left, right = state_a[key], state_b[key]
        if isinstance(left, dict):
            assert left.keys() == right.keys(), key
            for name in left:
                assert torch.equal(left[name], right[name]), f"{key}/{name} differs after resuming"
        else:
            assert torch.equal(left, right), f"{key} differs after resuming"


@pytest.mark.parametrize("name", [*ALL_METHODS, "meta-sparsity:first_order=false"])
def test_interrupted_training_resumes_to_identical_parameters_and_metrics(name, nyu_data, tmp_path):
    """Every registered method (and second-order meta-sparsity) saves its training state into a checkpoint of
    tensors and plain data, and resuming from it changes nothing about the result."""
    ctx = _context(nyu_data)
    plain, plain_outcome = _train(name, ctx)
    checkpoint = tmp_path / RESUME_FILE
    with pytest.raises(Interrupted):
        _train(name, ctx, checkpoint=checkpoint, every=3, progress=_interrupt_at(5))
    assert torch.load(checkpoint, weights_only=True)["next_step"] == 3  # steps 3 and 4 are lost and redone
    notices: list[str] = []
    torch.manual_seed(12345)  # the global RNG state comes from the checkpoint, not from here
    resumed, outcome = _train(name, ctx, checkpoint=checkpoint, every=3, notice=notices.append)
    assert notices == [f"resuming from step 3 of 8 (checkpoint {checkpoint})"]
    assert outcome.resumed_from == 3 and plain_outcome.resumed_from == 0
    assert outcome.history == plain_outcome.history
    assert (outcome.lam_start, outcome.lam_end) == (plain_outcome.lam_start, plain_outcome.lam_end)
    _assert_same_state(plain.state_dict(), resumed.state_dict())
    assert _final_metrics(plain, ctx, nyu_data) == _final_metrics(resumed, ctx, nyu_data)
    # kept after the last step (a kill during the meta-test does not retrain); no temporary file left
    assert torch.load(checkpoint, weights_only=True)["next_step"] == 8
    assert [p.name for p in tmp_path.iterdir()] == [RESUME_FILE]


def test_checkpoint_of_another_configuration_is_refused(nyu_data, tmp_path):
    checkpoint = tmp_path / RESUME_FILE
    with pytest.raises(Interrupted):
        _train("fixed-lambda", _context(nyu_data), checkpoint=checkpoint, every=3, progress=_interrupt_at(5))
    written = checkpoint.read_bytes()
    for name, ctx in (("fixed-lambda", _context(nyu_data, seed=1)), ("ew", _context(nyu_data))):
        with pytest.raises(CheckpointError, match="another configuration") as caught:
            _train(name, ctx, checkpoint=checkpoint, every=3)
        error = caught.value
        assert error.expected and error.found and error.fix and "--fresh" in error.fix
        if name == "ew":
            assert "method_class" in error.expected and "FixedLambda" in error.found
        else:
            assert "seed = 0" in error.found and "seed = 1" in error.expected
        assert checkpoint.read_bytes() == written  # refused before anything was trained or overwritten
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _train("fixed-lambda", _context(nyu_data), checkpoint=checkpoint)
    # resume=False discards whatever is there and starts from step 0
    _, outcome = _train("ew", _context(nyu_data), checkpoint=checkpoint, every=3, resume=False)
    assert outcome.resumed_from == 0 and len(outcome.history) == TINY.steps


# --- end to end through execute / the CLI -------------------------------------------------------------


@pytest.fixture
def tiny_budget(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(presets.BUDGETS, TINY.name, TINY)
    return TINY.name


def _request(root: Path, method: str, out: Path, **kwargs: Any) -> RunRequest:
    return RunRequest(
        method=method,
        data_root=root,
        unseen=("depth",),
        budget=TINY.name,
        out=out,
        reference=False,
        results=out.parent / "results",
        **kwargs,
    )


def _interrupting_bar(step: int) -> Callable[[str], Any]:
    """A progress factory for `execute` whose training bar is interrupted at ``step``."""

    @contextmanager
    def bar(description: str) -> Iterator[Callable[..., None]]:
        yield _interrupt_at(step) if "training" in description else (lambda *args: None)

    return bar


def _outcome(executed) -> dict:
    """Everything of a result that must not depend on the interruption (not ids, times, environment)."""
    keys = ("tasks", "sparsity", "lambda", "history", "delta_m", "protocol", "method", "dataset", "inference")
    payload = executed.result.to_json()
    picked = {key: payload.get(key) for key in keys}
    for task in picked["tasks"].values():
        task.pop("finetune_seconds"), task.pop("eval_seconds")
    return picked


@pytest.mark.parametrize("name", ["ew", "fixed-lambda", "meta-sparsity"])
def test_interrupted_run_gives_the_uninterrupted_result(name, nyu_mtan, tmp_path, tiny_budget):
    plain = execute(_request(nyu_mtan, name, tmp_path / "plain", checkpoint_every=3))
    assert not (tmp_path / "plain" / RESUME_FILE).exists()  # removed once result.json is written
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        execute(_request(nyu_mtan, name, out, checkpoint_every=3), progress=_interrupting_bar(7))
    assert (out / RESUME_FILE).is_file() and not (out / "result.json").exists()
    notices: list[str] = []
    resumed = execute(_request(nyu_mtan, name, out, checkpoint_every=3), notice=notices.append)
    assert f"resuming from step 6 of 8 (checkpoint {out / RESUME_FILE})" in notices
    assert _outcome(resumed) == _outcome(plain)
    _assert_same_state(*(torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "plain", out)))
    assert not (out / RESUME_FILE).exists()


def test_run_without_out_resumes_from_its_configuration_folder(nyu_mtan, tmp_path, tiny_budget, monkeypatch):
    monkeypatch.chdir(tmp_path)
    request = dataclasses.replace(_request(nyu_mtan, "ew", tmp_path / "unused", checkpoint_every=3), out=None)
    with pytest.raises(Interrupted):
        execute(request, progress=_interrupting_bar(5))
    (folder,) = (tmp_path / "runs" / ".resume").iterdir()
    assert folder.name.startswith("ew-seed0-") and (folder / RESUME_FILE).is_file()
    notices: list[str] = []
    execute(request, notice=notices.append)
    assert any(n.startswith("resuming from step 3 of 8") for n in notices), notices
    assert not any((tmp_path / "runs" / ".resume").iterdir())  # removed with the finished run


def test_cli_resumes_and_fresh_starts_over(cli, nyu_mtan, tmp_path, tiny_budget):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        execute(_request(nyu_mtan, "meta-sparsity", out, checkpoint_every=3), progress=_interrupting_bar(5))
    args = ("run", "meta-sparsity", "--data-root", nyu_mtan, "--unseen", "depth", "--budget", TINY.name)
    args += ("--out", out, "--no-reference", "--results", tmp_path / "results")
    code, text = cli(*args)
    assert code == 0, text
    assert "resuming from step 3 of 8" in text and (out / "result.json").is_file()
    assert not (out / RESUME_FILE).exists()
    # a checkpoint of another configuration: the run stops with the typed error and keeps the file
    with pytest.raises(Interrupted):
        execute(_request(nyu_mtan, "meta-sparsity", out, checkpoint_every=3, seed=1), progress=_interrupting_bar(6))
    code, text = cli(*args)
    assert code == 1 and "another configuration" in text and "seed" in text and "--fresh" in text
    assert (out / RESUME_FILE).is_file()
    code, text = cli(*args, "--fresh")
    assert code == 0, text
    assert "resuming" not in text and not (out / RESUME_FILE).exists()
    code, text = cli("run", "--help")
    assert "--fresh" in text and f"every {CHECKPOINT_EVERY} steps" in " ".join(text.split())


# --- a real kill -9 -------------------------------------------------------------------------------------

#: The child: an ew run of ``STEPS`` steps, checkpoints every 5; each step sleeps 20 ms first, so the kill
#: lands during training (the sleep changes no number, and the class it patches pickles by name).
_CHILD = """
import dataclasses, sys, time
from pathlib import Path
from mtbench import presets
from mtbench.runner import RunRequest, execute
from mtbench_baselines.ew import EqualWeighting

step = EqualWeighting.step
EqualWeighting.step = lambda self, ctx, i: (time.sleep(0.02), step(self, ctx, i))[1]
smoke = presets.BUDGETS["smoke"]
presets.BUDGETS["resume-kill"] = dataclasses.replace(smoke, name="resume-kill", steps=STEPS, log_every=5)
execute(RunRequest(method="ew", data_root=Path(sys.argv[1]), unseen=("depth",), budget="resume-kill",
                   out=Path(sys.argv[2]), reference=False, results=Path(sys.argv[3]), checkpoint_every=5))
"""


def test_kill_9_during_training_then_resume(nyu_mtan, tmp_path, monkeypatch):
    """A child process killed with SIGKILL after its first checkpoint; the resumed run ends as an uninterrupted one."""
    steps = 60
    kill = dataclasses.replace(budget("smoke"), name="resume-kill", steps=steps, log_every=5)
    monkeypatch.setitem(presets.BUDGETS, kill.name, kill)
    out, results = tmp_path / "killed", tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    code = _CHILD.replace("STEPS", str(steps))
    child = subprocess.Popen([sys.executable, "-c", code, str(nyu_mtan), str(out), str(results)], env=env)
    try:
        deadline = time.monotonic() + 180
        while not (out / RESUME_FILE).exists():
            assert child.poll() is None, "the child ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        time.sleep(0.25)  # a few more steps: the kill may land mid-step or mid-write
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL and not (out / "result.json").exists()
    reached = torch.load(out / RESUME_FILE, weights_only=True)["next_step"]
    assert 5 <= reached < steps and reached % 5 == 0, "the kill did not land during training"
    notices: list[str] = []
    request = RunRequest(
        method="ew",
        data_root=nyu_mtan,
        unseen=("depth",),
        budget=kill.name,
        out=out,
        reference=False,
        results=results,
        checkpoint_every=5,
    )
    resumed = execute(request, notice=notices.append)
    assert f"resuming from step {reached} of {steps} (checkpoint {out / RESUME_FILE})" in notices
    plain = execute(dataclasses.replace(request, out=tmp_path / "plain"))
    assert _outcome(resumed) == _outcome(plain)
    _assert_same_state(*(torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "plain", out)))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # a half-written temporary file is gone
    assert json.loads((out / "result.json").read_text())["history"] == plain.result.to_json()["history"]


# --- checkpoints that cannot run code --------------------------------------------------------------------------


class _RunsCodeWhenUnpickled:
    """Unpickling it calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_made_to_run_code_is_refused_without_running_it(nyu_data, tmp_path):
    checkpoint, marker = tmp_path / RESUME_FILE, tmp_path / "ran-code"
    torch.save({"format": 2, "identity": {}, "method": _RunsCodeWhenUnpickled(marker)}, checkpoint)
    with pytest.raises(CheckpointError, match="holds pickled objects") as caught:
        _train("ew", _context(nyu_data), checkpoint=checkpoint, every=3)
    assert not marker.exists()  # refused, and the code never ran
    assert "was not unpickled" in caught.value.found and "--fresh" in caught.value.fix


def test_an_old_format_checkpoint_is_refused_and_fresh_starts_over(nyu_data, tmp_path):
    checkpoint = tmp_path / RESUME_FILE
    info = methods().get("ew")
    old_style = info.method(info.config())  # format 1 pickled the whole method object
    torch.save({"format": 1, "identity": {}, "next_step": 3, "method": old_style}, checkpoint)
    with pytest.raises(CheckpointError, match="holds pickled objects") as caught:
        _train("ew", _context(nyu_data), checkpoint=checkpoint, every=3)
    assert "older mtbench" in caught.value.found
    _, outcome = _train("ew", _context(nyu_data), checkpoint=checkpoint, every=3, resume=False)  # --fresh
    assert outcome.resumed_from == 0
    state = torch.load(checkpoint, weights_only=True)  # what train writes now loads without unpickling objects
    assert state["format"] == 2 and isinstance(state["method"]["model"]["state"], dict)


def test_a_plugin_attribute_that_a_checkpoint_cannot_hold_is_named_at_the_first_checkpoint(nyu_data, tmp_path):
    from mtbench.train_state import UnsavableState

    info = methods().get("ew")

    class WithAnOddAttribute(info.method):
        def setup(self, ctx: TrainContext) -> None:
            super().setup(ctx)
            self.odd = object()

    ctx = _context(nyu_data)
    with pytest.raises(UnsavableState, match=r"WithAnOddAttribute\.odd holds a builtins\.object") as caught:
        train(WithAnOddAttribute(info.config()), ctx, checkpoint=tmp_path / RESUME_FILE, every=3)
    assert "rebuilt_by_setup" in caught.value.fix and "training_state" in caught.value.fix
