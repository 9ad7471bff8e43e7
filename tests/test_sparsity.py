"""Group sparsity: hand-worked penalty and prox, closed-form gradient vs autograd, statistics."""

from __future__ import annotations

import math

import pytest
import torch

from mtbench import catalog
from mtbench.models import ArchSpec, MultiTaskNet
from mtbench.sparsity import (
    group_lasso,
    group_lasso_grad,
    group_norms,
    prox_group_lasso_,
    shared_conv_weights,
    sparsity_stats,
    zero_group_masks,
)


def _weight() -> torch.Tensor:
    # C_out = 2, C_in = 2, 1×1 kernel: input-channel groups W[:, 0] = (3, 4), W[:, 1] = (0.3, 0.4)
    return torch.tensor([[3.0, 0.3], [4.0, 0.4]]).view(2, 2, 1, 1)


def test_group_norms_and_penalty_hand_worked():
    w = _weight()
    assert torch.allclose(group_norms(w), torch.tensor([5.0, 0.5]))
    assert torch.allclose(group_norms(w, "out"), torch.tensor([math.hypot(3, 0.3), math.hypot(4, 0.4)]))
    # n_g = C_out·k² = 2: Ω = √2 (5 + 0.5)
    assert group_lasso([w]).item() == pytest.approx(math.sqrt(2) * 5.5)
    assert group_lasso([w, 2 * w]).item() == pytest.approx(math.sqrt(2) * 5.5 * 3)


def test_prox_hand_worked_shrinks_and_zeroes_groups():
    w = _weight()
    prox_group_lasso_([w], 0.2)
    # scale_g = max(0, 1 − τ√n_g/‖W_g‖): 1 − 0.2√2/5 and 1 − 0.2√2/0.5
    s0, s1 = 1 - 0.2 * math.sqrt(2) / 5, 1 - 0.2 * math.sqrt(2) / 0.5
    expected = torch.tensor([[3 * s0, 0.3 * s1], [4 * s0, 0.4 * s1]]).view(2, 2, 1, 1)
    assert torch.allclose(w, expected)
    w = _weight()
    prox_group_lasso_([w], 0.4)  # 0.4√2 = 0.566 > 0.5: the second group becomes exactly zero
    assert torch.equal(w[:, 1], torch.zeros(2, 1, 1))
    assert torch.allclose(w[:, 0].flatten(), torch.tensor([3.0, 4.0]) * (1 - 0.4 * math.sqrt(2) / 5))


def test_prox_is_the_minimiser_of_the_proximal_objective():
    """prox_τΩ(v) = argmin_w ½‖w − v‖² + τΩ(w): no random perturbation does better."""
    torch.manual_seed(0)
    v = torch.randn(3, 4, 3, 3)
    w = v.clone()
    prox_group_lasso_([w], 0.3)
    objective = lambda x: 0.5 * (x - v).pow(2).sum() + 0.3 * group_lasso([x])  # noqa: E731
    best = objective(w)
    for _ in range(200):
        candidate = w + 0.01 * torch.randn_like(w)
        assert objective(candidate) >= best - 1e-6


def test_closed_form_gradient_matches_autograd():
    torch.manual_seed(1)
    weights = [
        torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(5, 4, 1, 1, dtype=torch.float64, requires_grad=True),
    ]
    for axis in ("in", "out"):
        auto = torch.autograd.grad(group_lasso(weights, axis), weights)
        closed = group_lasso_grad([w.detach() for w in weights], axis)
        for a, c in zip(auto, closed):
            assert torch.allclose(a, c)


def test_stats_and_masks_on_a_model():
    model = MultiTaskNet(ArchSpec("small", (8, 8, 16), norm="group"), [catalog.task("nyuv2", "depth")])
    names = [n for n, _ in shared_conv_weights(model)]
    assert names and all(not n.startswith("heads") for n in names)
    assert len(names) == sum(isinstance(m, torch.nn.Conv2d) for m in model.backbone.modules())
    weights = [w for _, w in shared_conv_weights(model)]
    with torch.no_grad():
        weights[1][:, :2] = 0  # zero two input-channel groups of the second conv
    stats = sparsity_stats(model)
    layer = stats.layers[1]
    assert layer.zero_groups == 2 and layer.zero_params == 2 * weights[1].shape[0] * 9
    total_groups = sum(w.shape[1] for w in weights)
    assert stats.group_sparsity == pytest.approx(2 / total_groups)
    masks = zero_group_masks(weights)
    assert masks[1].flatten()[:2].tolist() == [False, False] and masks[1].flatten()[2:].all()
