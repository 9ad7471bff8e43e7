"""GPU-ready training steps, checked on the CPU: no host sync in a step, same numbers, determinism recorded."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import random_nyu_context

from mtbench.aggregators import pcgrad
from mtbench.environment import environment
from mtbench.methods import methods
from mtbench.runner import RunRequest, execute
from mtbench.sparsity import ProximalAdam
from mtbench.training import TrainContext, accepts_fused, train


def branching_pcgrad(G: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """PCGrad as it was written before (a host-side ``if`` per pair): the reference."""
    K = G.shape[0]
    projected = []
    for i in range(K):
        g = G[i].clone()
        for j in rng.permutation(K).tolist():
            if j == i:
                continue
            dot = torch.dot(g, G[j])
            if dot < 0:
                g = g - dot / torch.dot(G[j], G[j]) * G[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [2, 3, 5])
def test_branch_free_pcgrad_equals_the_branching_formula(K: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(K)
    signs = {"negative": 0, "non-negative": 0}
    for trial in range(40):
        G = torch.randn(K, 50, generator=generator, dtype=dtype)
        if trial % 4 == 0:
            G[1] = -G[0] + 0.1 * torch.randn(50, generator=generator, dtype=dtype)  # a strong conflict
        if trial % 4 == 1:
            G[1] = G[0].clone()  # aligned pair
        if trial % 7 == 0:
            G[-1] = 0  # a zero gradient: dot 0, no projection onto it
        products = G @ G.T
        off_diagonal = products[~torch.eye(K, dtype=torch.bool)]
        signs["negative"] += int((off_diagonal < 0).sum())
        signs["non-negative"] += int((off_diagonal >= 0).sum())
        expected = branching_pcgrad(G, np.random.default_rng([trial, 1]))
        found = pcgrad(G, np.random.default_rng([trial, 1]))
        assert torch.equal(found, expected), trial
    assert signs["negative"] > 0 and signs["non-negative"] > 0  # both branches were exercised


def _context(log_every: int) -> TrainContext:
    return random_nyu_context(steps=5, log_every=log_every)


def _eager(method_class: type) -> type:
    """The method as before: every logged value converted to a float inside the step (a host sync)."""

    class Eager(method_class):  # type: ignore[misc, valid-type]
        def step(self, ctx, step):
            return {k: float(v) for k, v in super().step(ctx, step).items()}

    return Eager


METHODS = ["ew", "pcgrad", "uw", "dwa", "mgda", "cagrad", "famo", "gradnorm", "stl", "fixed-lambda", "meta-sparsity"]


@pytest.mark.parametrize("log_every", [1, 2])
@pytest.mark.parametrize("name", METHODS)
def test_history_with_deferred_floats_equals_floats_every_step(name: str, log_every: int):
    """Steps return device tensors; `train` converts at the logged steps only, to the very same history."""
    info = methods().get(name)
    histories = []
    for cls in (info.method, _eager(info.method)):
        torch.manual_seed(0)
        histories.append(train(cls(info.config()), _context(log_every)).history)
    deferred, eager = histories
    assert [entry["step"] for entry in deferred] == ([0, 1, 2, 3, 4] if log_every == 1 else [0, 2, 4])
    assert deferred == eager
    assert all(isinstance(v, float) for entry in deferred for k, v in entry.items() if k not in ("step", "lambda"))


@pytest.mark.parametrize("name", ["ew", "pcgrad", "mgda", "cagrad", "meta-sparsity", "stl"])
def test_a_step_returns_tensors_not_floats(name: str):
    """What a step logs stays a tensor (a float would have waited for the device)."""
    info = methods().get(name)
    ctx = _context(1)
    method = info.method(info.config())
    method.setup(ctx)
    logged = method.step(ctx, 0)
    assert all(isinstance(v, torch.Tensor) for k, v in logged.items() if k != "tasks"), logged


def test_fused_adam_is_offered_only_where_the_class_takes_it():
    assert accepts_fused(torch.optim.Adam) and accepts_fused(ProximalAdam)
    assert not accepts_fused(torch.optim.LBFGS)


def test_cpu_optimizers_are_unchanged_whatever_the_determinism():
    ctx = dataclasses.replace(_context(1), deterministic=False)
    optimizer = ctx.make_optimizer([torch.nn.Parameter(torch.zeros(3))])
    assert not optimizer.defaults.get("fused")


def test_determinism_defaults_by_device():
    request = RunRequest(method="ew")
    assert request.resolved_deterministic(torch.device("cpu")) is True
    assert request.resolved_deterministic(torch.device("cuda")) is False
    assert RunRequest(method="ew", deterministic=True).resolved_deterministic(torch.device("cuda")) is True
    assert RunRequest(method="ew", deterministic=False).resolved_deterministic(torch.device("cpu")) is False
    info = environment(torch.device("cpu"), deterministic=False)
    assert info["deterministic"] is False and info["cudnn_benchmark"] in (True, False)


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [None, False])
def test_the_result_records_determinism(nyu_mtan, tmp_path, deterministic):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        request = RunRequest(
            method="ew", data_root=nyu_mtan, budget="smoke", out=tmp_path / "ew", reference=False,
            device="cpu", deterministic=deterministic,
        )
        result = execute(request).result
    finally:
        torch.use_deterministic_algorithms(before)
    expected = deterministic is None  # auto on the CPU: deterministic
    assert result.environment["deterministic"] is expected
    assert result.environment["cudnn_benchmark"] is False  # only ever set on CUDA


def test_run_accepts_the_determinism_and_compile_options(cli, nyu_mtan, tmp_path):
    for flags in (["--deterministic"], ["--no-deterministic", "--compile"]):
        code, output = cli("run", "ew", "--data-root", nyu_mtan, "--budget", "smoke", "--device", "cpu",
                           "--out", tmp_path / "x", "--dry-run", *flags)
        assert code == 0, output


def test_determinism_is_set_without_importing_torchinductor():
    """A run that compiles nothing sets torch's deterministic-kernel flag without importing TorchInductor
    (about 1.6 s of CPU); a compiling one goes through the public function, which also sets inductor's option."""
    script = (
        "import sys, torch\n"
        "from mtbench.environment import apply_determinism\n"
        "device = torch.device('cpu')\n"
        "assert apply_determinism(True, device) is True\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()\n"
        "assert 'torch._inductor.config' not in sys.modules\n"
        "assert apply_determinism(False, device) is False\n"
        "assert not torch.are_deterministic_algorithms_enabled()\n"
        "assert apply_determinism(True, device, compiling=True) is True\n"
        "import torch._inductor.config as inductor\n"
        "assert inductor.deterministic is True and torch.are_deterministic_algorithms_enabled()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
