"""Proximal Adam: the D-metric group prox against independent solutions, and the optimizer step by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtbench.sparsity import (
    ProximalAdam,
    group_norms,
    lowest_norm_masks,
    prox_group_lasso_,
    weighted_group_prox,
)


def _objective(x: np.ndarray, v: np.ndarray, d: np.ndarray, tau: float) -> float:
    return 0.5 * float(np.sum(d * (x - v) ** 2)) + tau * float(np.linalg.norm(x))


def _generic_solution(v: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    """argmin ½‖x − v‖²_D + τ‖x‖₂ by a generic solver (Powell, derivative-free), from two starts."""
    best = None
    for start in (v, np.zeros_like(v) + 1e-9):
        found = minimize(_objective, start, args=(v, d, tau), method="Powell", options={"xtol": 1e-12, "ftol": 1e-15, "maxiter": 200000})
        if best is None or found.fun < best.fun:
            best = found
    return best.x


@pytest.mark.parametrize("case", range(6))
def test_weighted_prox_matches_a_generic_solver(case):
    rng = np.random.default_rng(case)
    v = rng.normal(size=(1, 5))
    d = rng.uniform(0.2, 3.0, size=(1, 5))
    tau = float(np.linalg.norm(d * v)) * [0.1, 0.5, 0.9, 0.99, 1.01, 2.0][case]  # both sides of the zero threshold
    ours = weighted_group_prox(torch.tensor(v), torch.tensor(d), torch.tensor([tau])).numpy()[0]
    generic = _generic_solution(v[0], d[0], tau)
    assert _objective(ours, v[0], d[0], tau) <= _objective(generic, v[0], d[0], tau) + 1e-10
    assert np.allclose(ours, generic, atol=1e-5)
    assert (not ours.any()) == (np.linalg.norm(d * v) <= tau)


def test_weighted_prox_satisfies_the_kkt_conditions_with_tiny_and_huge_metrics():
    rng = np.random.default_rng(7)
    v = torch.tensor(rng.normal(size=(6, 40)))
    d = torch.tensor(rng.uniform(0.5, 2.0, size=(6, 40)))
    d[1] *= 1e-9  # tiny metric: the prox is (almost) free to move: zeroed
    d[2] *= 1e9  # huge metric: the prox barely moves a group
    d[3] = torch.logspace(-6, 6, 40, dtype=torch.float64)  # both within one group
    v[4] = 0.0  # an all-zero group stays zero
    tau = torch.full((6,), 0.3, dtype=torch.float64)
    x = weighted_group_prox(v, d, tau)
    for g in range(6):
        if torch.linalg.norm(d[g] * v[g]) <= tau[g]:
            assert torch.equal(x[g], torch.zeros_like(x[g])), g  # 0 ∈ −Dv + τ·∂‖0‖ ⟺ ‖Dv‖ ≤ τ
        else:
            stationarity = d[g] * (x[g] - v[g]) + tau[g] * x[g] / torch.linalg.norm(x[g])
            assert stationarity.abs().max() <= 1e-9 * max(1.0, float((d[g] * v[g]).abs().max())), g
    assert torch.equal(x[1], torch.zeros(40, dtype=torch.float64)) and torch.equal(x[4], torch.zeros(40, dtype=torch.float64))
    assert torch.allclose(x[2], v[2], rtol=1e-6)


def test_unit_metric_is_plain_block_soft_thresholding():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    plain, weighted = w.clone(), w.clone()
    prox_group_lasso_([plain], 0.05)
    prox_group_lasso_([weighted], 0.05, denominators=[torch.ones_like(w)])
    assert torch.allclose(plain, weighted, atol=1e-12)
    for axis in ("in", "out"):
        a, b = w.clone(), w.clone()
        prox_group_lasso_([a], 0.1, axis)
        prox_group_lasso_([b], 0.1, axis, [torch.ones_like(w)])
        assert torch.allclose(a, b, atol=1e-12)


def _adam_by_hand(w0, grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """Adam's iterate and its bias-corrected denominator after len(grads) steps, written out."""
    m = torch.zeros_like(w0)
    v = torch.zeros_like(w0)
    w = w0.clone()
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w - lr * m_hat / (v_hat.sqrt() + eps)
        yield w, v_hat.sqrt() + eps, v.sqrt() + eps


def test_proximal_adam_step_is_adam_then_the_weighted_prox():
    torch.manual_seed(1)
    w0 = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    grads = [torch.randn_like(w0) * s for s in (1.0, 0.1, 3.0)]
    lr, lam = 0.05, 0.02
    param = torch.nn.Parameter(w0.clone())
    other = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    optimizer = ProximalAdam(
        [{"params": [other]}, {"params": [param], "group_lasso": True, "lam": lam, "axis": "in"}], lr=lr
    )
    expected = w0.clone()
    m = torch.zeros_like(w0)
    v = torch.zeros_like(w0)
    for t, g in enumerate(grads, start=1):
        param.grad, other.grad = g.clone(), torch.zeros(3, dtype=torch.float64)
        optimizer.step()
        # independent: Adam by hand from the previous (proximal) iterate, then the KKT-solved prox
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        denominator = (v / (1 - 0.999**t)).sqrt() + 1e-8
        half = expected - lr * (m / (1 - 0.9**t)) / denominator
        rows = half.transpose(0, 1).reshape(4, -1)
        metric = denominator.transpose(0, 1).reshape(4, -1)
        tau = lr * lam * math.sqrt(5 * 9)
        solved = torch.stack(
            [torch.tensor(_generic_solution(r.numpy(), dm.numpy(), tau)) for r, dm in zip(rows, metric)]
        )
        expected = solved.reshape(4, 5, 3, 3).transpose(0, 1)
        assert torch.allclose(param.detach(), expected, atol=1e-6), t
        expected = param.detach().clone()  # continue from the optimizer's own iterate (exact zeros kept)


def test_bias_correction_keeps_groups_alive_at_the_first_step():
    """Uncorrected √v ≈ 0.03|g| at step 1 makes the metric ~30× smaller: groups die on no evidence.

    Here ‖D_g v_g‖ ≈ √n_g with the corrected D ≈ |g| (unit weights and gradients) and ≈ 0.03√n_g without,
    against τ_g = lr·λ·√n_g = 0.1√n_g: only the uncorrected metric zeroes groups.
    """
    torch.manual_seed(2)
    survivors = {}
    for corrected in (True, False):
        param = torch.nn.Parameter(torch.randn(16, 32, 3, 3))
        optimizer = ProximalAdam(
            [{"params": [param], "group_lasso": True, "lam": 100.0}], lr=1e-3, bias_correction=corrected
        )
        param.grad = torch.randn_like(param)
        optimizer.step()
        survivors[corrected] = int((group_norms(param.detach()) > 0).sum())
    assert survivors[True] == 32 and survivors[False] == 0


def test_callable_lambda_and_plain_prox_option():
    param = torch.nn.Parameter(torch.ones(2, 3, 1, 1))
    optimizer = ProximalAdam(
        [{"params": [param], "group_lasso": True, "lam": lambda: [1e6]}], lr=0.1, prox="plain"
    )
    param.grad = torch.zeros_like(param)
    optimizer.step()
    assert torch.equal(param.detach(), torch.zeros_like(param))  # τ huge: every group zeroed, Euclidean prox


def test_step_without_prox_then_apply_prox_is_the_step():
    """``step(prox=False)`` + ``apply_prox()`` (meta-sparsity's online path reads the iterate in between)
    gives exactly ``step()``: one prox, taken once."""
    torch.manual_seed(3)
    w0, grads = torch.randn(6, 5, 3, 3), [torch.randn(6, 5, 3, 3) * s for s in (1.0, 0.2)]
    w0[:, :2] *= 0.01  # two small groups, which the prox zeroes
    finals = []
    for split in (False, True):
        param = torch.nn.Parameter(w0.clone())
        optimizer = ProximalAdam([{"params": [param], "group_lasso": True, "lam": 2.0}], lr=0.05)
        for g in grads:
            param.grad = g.clone()
            if split:
                optimizer.step(prox=False)
                optimizer.apply_prox()
            else:
                optimizer.step()
        finals.append(param.detach().clone())
    assert torch.equal(finals[0], finals[1])
    assert 0 < int((group_norms(finals[0]) == 0).sum()) < 5  # the prox did zero some groups, not all


def test_lowest_norm_masks_hand_worked():
    # layer A: group norms 1, 2, 3, 4 (mean 2.5 → relative .4 .8 1.2 1.6); layer B: 10, 30 (mean 20 → .5 1.5)
    a = torch.zeros(1, 4, 1, 1)
    a[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.zeros(1, 2, 1, 1)
    b[0, :, 0, 0] = torch.tensor([10.0, 30.0])
    masks = lowest_norm_masks([a, b], sparsity=0.5)  # 3 of 6 groups: relative .4 (A0), .5 (B0), .8 (A1)
    assert masks[0].flatten().tolist() == [False, False, True, True]
    assert masks[1].flatten().tolist() == [False, True]
    masks = lowest_norm_masks([a, b], sparsity=0.5, scope="layer")  # 2 of 4 in A, 1 of 2 in B
    assert masks[0].flatten().tolist() == [False, False, True, True]
    assert masks[1].flatten().tolist() == [False, True]
    masks = lowest_norm_masks([a, b], sparsity=0.99)  # at least one group survives per layer
    assert masks[0].flatten().tolist() == [False, False, False, True] and masks[1].flatten().tolist() == [False, True]
