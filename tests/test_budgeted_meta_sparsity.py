"""Budgeted meta-sparsity: the dual step on a toy cost, the dual inside a run, the zero-sum allocation step, the
ranking the cut uses, FLOPs targets on smoke runs, and resuming."""

from __future__ import annotations

import math

import mtbench_baselines.budgeted_meta_sparsity as bms
import pytest
import torch
from conftest import random_nyu_context
from mtbench_baselines.budgeted_meta_sparsity import BudgetedMetaSparsity, BudgetedMetaSparsityConfig, dual_step

from mtbench.runner import RunRequest, execute
from mtbench.sparsity import group_norms, shared_conv_weights
from mtbench.training import train


def test_the_dual_step_rises_above_the_budget_falls_below_and_converges_on_a_monotone_cost():
    """ν += lr·(c − B): up when above, down when below, still at the budget, clipped to ±bound; iterated on a cost
    that falls with ν (c(ν) = sigmoid(1 − ν), from either side of the budget), it settles where c = B."""
    assert dual_step(0.0, 0.8, 0.5, 2.0) == pytest.approx(0.6)
    assert dual_step(0.0, 0.3, 0.5, 2.0) == pytest.approx(-0.4)
    assert dual_step(1.5, 0.5, 0.5, 2.0) == 1.5
    assert dual_step(9.9, 1.0, 0.0, 1.0, bound=10.0) == 10.0 and dual_step(-9.9, 0.0, 1.0, 1.0, 10.0) == -10.0

    def cost(nu: float) -> float:
        return 1.0 / (1.0 + math.exp(nu - 1.0))

    for start, budget in ((-3.0, 0.25), (6.0, 0.75), (0.0, 0.5)):
        nu, moves = start, []
        for _ in range(300):
            new = dual_step(nu, cost(nu), budget, 1.0)
            moves.append((cost(nu) - budget, new - nu))
            nu = new
        assert all(math.copysign(1, gap) == math.copysign(1, move) for gap, move in moves if gap)
        assert abs(cost(nu) - budget) < 1e-6
        assert nu == pytest.approx(1.0 - math.log(budget / (1 - budget)), abs=1e-5)


def test_in_a_run_the_dual_follows_the_measured_flops_and_the_cut_uses_the_prox_statistic():
    """16 meta-iterations, a budget of 0.5 reached at step 8, ν stepped at every step: each logged ν is the dual step
    from the previous one on the compact FLOPs fraction measured at that step; ν rises while the network is dense and
    the sparsity it drives brings the measured cost down. At the step before the cut, the groups whose statistic
    ‖D⊙v‖/(ηλ√n) is at most 1 are exactly the ones the prox zeroed; the cut then meets the budget."""
    ctx = random_nyu_context(steps=16, log_every=1)
    # λ starts at 1e-2 (the default 1e-4 zeroes nothing in 16 steps): the test is of the dual's mechanics
    config = BudgetedMetaSparsityConfig(flops=0.5, check_every=1, lam_init=1e-2)
    torch.manual_seed(0)
    method = BudgetedMetaSparsity(config)
    method.setup(ctx)
    end = method.end_step(ctx)
    assert end == 12
    logs, nu = [], 0.0
    for step in range(end):
        logged = method.step(ctx, step)
        assert logged["nu"] == dual_step(nu, logged["flops_fraction"], logged["flops_target"], 1.0, 10.0)
        assert logged["flops_target"] == pytest.approx(method.scheduled(ctx, step))
        nu = logged["nu"]
        logs.append(logged)
    assert logs[0]["flops_target"] == 1.0 and logs[-1]["flops_target"] == 0.5
    assert logs[3]["nu"] > logs[2]["nu"] > logs[1]["nu"] > 0  # dense network, falling budget: ν rises
    assert min(entry["flops_fraction"] for entry in logs) < 0.9  # and the λ it sets removes channels
    scores = torch.cat([s.flatten() for s in method.scores])
    zero = torch.cat([group_norms(w) == 0 for _, w in shared_conv_weights(method.model)])
    clear = (scores - 1).abs() > 1e-4
    assert zero.any() and (~zero).any() and bool(clear.all())
    assert torch.equal(zero[clear], (scores <= 1)[clear])
    logged = method.step(ctx, end)
    assert abs(logged["flops_fraction"] - 0.5) <= 0.02 and "lambda_multiplier" in logged
    zero = torch.cat([group_norms(w) == 0 for _, w in shared_conv_weights(method.model)])
    assert torch.equal(zero, ~torch.cat([m.flatten() for m in method.masks]))


def test_the_meta_gradient_moves_the_allocation_only_on_the_zero_sum_subspace(monkeypatch):
    """The per-layer step keeps Σ_l ρ_l (the geometric mean of λ is lam_init·exp(ν)) while moving the layers apart:
    the gradient Adam gets is the raw ∂L_Q/∂ρ minus its mean, and Adam's step is re-centred."""
    vector = torch.tensor([0.3, -1.2, 2.0, 0.1])
    projected = bms.project_zero_sum(vector)
    assert float(projected.sum()) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(vector - projected, torch.full_like(vector, float(vector.mean())))
    assert torch.allclose(bms.project_zero_sum(projected), projected, atol=1e-6)

    raw: list[torch.Tensor] = []
    original = bms.project_zero_sum

    def spy(grad: torch.Tensor) -> torch.Tensor:
        raw.append(grad.clone())
        return original(grad)

    monkeypatch.setattr(bms, "project_zero_sum", spy)
    ctx = random_nyu_context(steps=40, log_every=1)
    method = BudgetedMetaSparsity(BudgetedMetaSparsityConfig(check_every=100, rho_lr=0.2))
    method.setup(ctx)
    start = method.rho.detach().clone()
    for step in range(5):
        method.step(ctx, step)
        assert float(method.rho.detach().sum()) == pytest.approx(float(start.sum()), rel=1e-6)
        applied = method.rho.grad
        assert float(applied.sum()) == pytest.approx(0.0, abs=1e-6 * float(raw[-1].abs().max()))
        assert torch.allclose(applied, raw[-1] - raw[-1].mean())
    assert len(raw) == 5 and all(float(r.abs().max()) > 0 for r in raw)
    assert float(raw[-1].mean().abs()) > 1e-3 * float(raw[-1].abs().max())  # there was an overall push to remove
    moved = method.rho.detach() - start
    assert float(moved.max() - moved.min()) > 1e-3  # the layers moved apart
    lam = torch.tensor(method.lam(), dtype=torch.float64)
    assert float(lam.log().mean()) == pytest.approx(math.log(method.config.lam_init) + method.nu, rel=1e-5)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_smoke_runs_meet_their_flops_target(nyu_mtan, tmp_path, target):
    """Through `mtbench.runner.execute` at the smoke budget: the result's own accounting (compact ÷ dense FLOPs of
    the trained network) is within ±0.02 of the target; the history records λ per layer, ν and the fraction."""
    request = RunRequest(
        method="budgeted-meta-sparsity", data_root=nyu_mtan, budget="smoke", unseen=("depth",),
        overrides={"flops": str(target)}, out=tmp_path / "bms", reference=False,
    )  # fmt: skip
    result = execute(request).result
    flops = result.inference.flops
    assert abs(flops.compact / flops.dense - target) <= 0.02, flops.compact / flops.dense
    assert result.method.family == "sparse" and result.sparsity.group_sparsity > 0
    last = result.history[-1]
    assert isinstance(last.lam, list) and len(last.lam) > 1
    assert {"nu", "flops_fraction", "flops_target", "lambda_multiplier"} <= set(last.extra)
    assert abs(last.extra["flops_fraction"] - target) <= 0.02


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop", [5, 7])
def test_resuming_mid_training_gives_the_same_history_and_network(tmp_path, stop):
    """Killed after step ``stop`` of 8 (checkpoints every 3 steps; the prox statistic taken at step 5, the cut at
    step 6): resumed from step 3 (statistic and cut after the resume) or 6 (the statistic from the checkpoint), the
    run ends with the same history, parameters, ρ, ν and mask as the uninterrupted one."""
    config = BudgetedMetaSparsityConfig(flops=0.6, check_every=1)
    torch.manual_seed(0)
    plain = BudgetedMetaSparsity(config)
    done = train(plain, random_nyu_context(steps=8, log_every=1))

    def stop_at(done: int, total: int, info: dict | None = None) -> None:
        if done == stop:
            raise _Stop

    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(_Stop):
        train(BudgetedMetaSparsity(config), random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3,
              progress=stop_at)  # fmt: skip
    resumed = BudgetedMetaSparsity(config)
    torch.manual_seed(123)
    again = train(resumed, random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3)
    assert again.resumed_from == (3 if stop == 5 else 6) and again.history == done.history
    state, other = plain.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    assert torch.equal(plain.rho, resumed.rho) and plain.nu == resumed.nu and plain.nu != 0
    assert all(torch.equal(a, b) for a, b in zip(plain.masks, resumed.masks))
    assert plain.multiplier == resumed.multiplier
