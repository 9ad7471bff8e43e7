"""DiSparse: per-task connection sensitivity by hand, the disentangled rule on hand-made scores, each mode and
prune's FLOPs target at their targets on smoke runs."""

from __future__ import annotations

import pytest
import torch
from conftest import random_nyu_context
from mtbench_baselines.disparse import (
    DiSparse,
    DiSparseConfig,
    cosine_rate,
    disentangled_keep,
    disentangled_scores,
    group_gradient,
    task_scores,
)
from mtbench_baselines.prune import Prune, PruneConfig
from torch import nn

from mtbench.cost import masks_removing
from mtbench.runner import RunRequest, execute
from mtbench.sparsity import group_norms, lowest_norm_masks, shared_conv_weights
from mtbench.training import train


class Shared(nn.Module):
    """One shared 1×1 conv, 3 → 2 channels, W = [[1, −2, 0.5], [3, 1, −1]]; head a reads 2·y₀ − y₁, head b y₁."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False))
        self.heads = nn.ModuleDict({"a": nn.Conv2d(2, 1, 1, bias=False), "b": nn.Conv2d(2, 1, 1, bias=False)})
        with torch.no_grad():
            self.backbone[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]]).view(2, 3, 1, 1))
            self.heads["a"].weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
            self.heads["b"].weight.copy_(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))


def _losses(network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    features = network.backbone(batch["image"])
    return {task: network.heads[task](features).sum() for task in ("a", "b")}


def _pixel(*values: float) -> dict[str, torch.Tensor]:
    return {"image": torch.tensor([float(v) for v in values]).view(1, 3, 1, 1)}


def test_connection_sensitivity_by_hand():
    """∂L_a/∂W[o, c] = a_o·x_c with a = (2, −1); ∂L_b/∂W[o, c] = b_o·x_c with b = (0, 1). For x = (1, 2, −1),
    |W ⊙ ∂L_a/∂W| = [[2, 8, 1], [3, 2, 1]] → input groups (5, 10, 2), output groups (11, 6); for b [[0, 0, 0],
    [3, 2, 1]] → (3, 2, 1). For x' = (0, 1, 1): a [[0, 4, 1], [0, 1, 1]] → (0, 5, 2); b → (0, 1, 1). The scores
    average the two batches, each taken in absolute value first."""
    model = Shared()
    batches = [_pixel(1, 2, -1), _pixel(0, 1, 1)]
    scores = task_scores(model, batches, _losses, "in")
    assert torch.allclose(scores["a"][0], torch.tensor([2.5, 7.5, 2.0]))
    assert torch.allclose(scores["b"][0], torch.tensor([1.5, 1.5, 1.0]))
    by_output = task_scores(model, batches[:1], _losses, "out")
    assert torch.allclose(by_output["a"][0], torch.tensor([11.0, 6.0]))
    assert torch.allclose(by_output["b"][0], torch.tensor([0.0, 6.0]))
    gradients = task_scores(model, batches[:1], _losses, "in", group_gradient)  # Σ|g|: (|a₀|+|a₁|)·|x_c|
    assert torch.allclose(gradients["a"][0], torch.tensor([3.0, 6.0, 3.0]))
    assert model.backbone[0].weight.grad is None  # scored on a copy


def test_the_disentangled_rule_on_hand_made_scores():
    """Two layers of three groups, task a preferring the first groups, b the last: with k = 2 each, a keeps
    {0, 1}, b {4, 5}, and the shared mask their union; groups 2 and 3 go (no task needs them)."""
    per_task = {
        "a": [torch.tensor([6.0, 5.0, 4.0]), torch.tensor([3.0, 2.0, 1.0])],
        "b": [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])],
    }
    flat = lambda masks: torch.cat([m.flatten() for m in masks]).tolist()  # noqa: E731
    assert flat(disentangled_keep(per_task, 1)) == [True, False, False, False, False, True]
    assert flat(disentangled_keep(per_task, 2)) == [True, True, False, False, True, True]
    assert flat(disentangled_keep(per_task, 3)) == [True] * 6
    combined = disentangled_scores(per_task)
    for k, kept in ((1, 2), (2, 4)):  # removing in the combined order, one budget at a time, is the union rule
        assert flat(masks_removing(combined, 6 - kept)) == flat(disentangled_keep(per_task, k))


def test_a_group_one_task_needs_outlives_one_every_task_finds_middling():
    """a = (9, 5, 0, 5), b = (0, 5, 9, 5): the summed scores (9, 10, 9, 10) would keep groups 1 and 3; the
    disentangled rule keeps 0 and 2, each the best group of one task. Between two budgets the larger share of a
    task's total decides (group 1: 5/19 beats group 3 only by position, both 5/19)."""
    per_task = {"a": [torch.tensor([9.0, 5.0, 0.0, 5.0])], "b": [torch.tensor([0.0, 5.0, 9.0, 5.0])]}
    combined = disentangled_scores(per_task)
    assert masks_removing(combined, 2)[0].flatten().tolist() == [True, False, True, False]
    assert masks_removing(combined, 1)[0].flatten().tolist() == [True, True, True, False]
    summed = [per_task["a"][0] + per_task["b"][0]]
    assert masks_removing(summed, 2)[0].flatten().tolist() == [False, True, False, True]


def test_cosine_rate_is_the_paper_schedule():
    assert cosine_rate(0.5, 0, 450) == 0.5 and cosine_rate(0.5, 450, 450) == pytest.approx(0.0, abs=1e-12)
    assert cosine_rate(0.5, 225, 450) == pytest.approx(0.25)
    assert cosine_rate(0.5, 600, 450) == cosine_rate(0.5, 450, 450)


@pytest.mark.parametrize("axis", ["in", "out"])
def test_dynamic_mode_keeps_its_group_budget_and_changes_the_mask(axis):
    """Dynamic with a group-count target (40 % of the groups) over 12 steps, updates every 3 steps until step 9:
    the mask moves between updates (drop by norm, regrow by gradient) and ends at the target exactly, every kept
    group non-zero (a regrown group resumes its dormant values: at zero an output filter would stay dead)."""
    ctx = random_nyu_context(steps=12, log_every=1)
    method = DiSparse(DiSparseConfig(mode="dynamic", sparsity=0.4, interval=3, axis=axis))
    method.setup(ctx)
    seen = []
    for step in range(12):
        method.step(ctx, step)
        seen.append(torch.cat([m.flatten() for m in method.masks]).clone())
    groups = seen[0].numel()
    assert method.end_step(ctx) == 9
    assert all(int((~mask).sum()) == round(0.4 * groups) for mask in seen[9:])
    assert all(int((~mask).sum()) <= round(0.4 * groups) for mask in seen)  # the union regrows at least as much
    assert any(not torch.equal(seen[i], seen[i + 3]) for i in (0, 3))
    zero = [group_norms(w, axis) == 0 for _, w in shared_conv_weights(method.model)]
    assert torch.equal(torch.cat(zero), ~seen[-1])


def test_static_mode_scores_once_before_the_first_step():
    ctx = random_nyu_context(steps=4, log_every=1)
    method = DiSparse(DiSparseConfig(sparsity=0.3, score_batches=3))
    train(method, ctx)
    zero = torch.cat([(w.pow(2).sum(dim=(0, 2, 3)) == 0) for _, w in shared_conv_weights(method.model)])
    assert int(zero.sum()) == round(0.3 * zero.numel())
    assert torch.equal(zero, ~torch.cat([m.flatten() for m in method.masks]))


def test_prune_default_masks_are_the_lowest_norm_masks():
    """The published default (sparsity 0.5, scope global) still takes `lowest_norm_masks` itself: bit-identical."""
    ctx = random_nyu_context()
    method = Prune(PruneConfig())
    method.setup(ctx)
    weights = [w for _, w in shared_conv_weights(method.model)]
    found = method.make_masks(ctx, weights)
    assert all(torch.equal(a, b) for a, b in zip(found, lowest_norm_masks(weights, 0.5, "in", "global")))


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("disparse", {"mode": "static", "flops": "0.5"}),
        ("disparse", {"mode": "dynamic", "flops": "0.5"}),
        ("prune", {"flops": "0.5", "scope": "magnitude"}),
    ],
)
def test_smoke_runs_meet_their_flops_target(nyu_mtan, tmp_path, method, overrides):
    """Through `mtbench.runner.execute` at the smoke budget: the result's own accounting (compact ÷ dense FLOPs of
    the trained network, heads of the seen tasks) is within ±0.02 of the target."""
    request = RunRequest(
        method=method, data_root=nyu_mtan, budget="smoke", unseen=("depth",), overrides=overrides,
        out=tmp_path / method, reference=False,
    )  # fmt: skip
    result = execute(request).result
    flops = result.inference.flops
    assert abs(flops.compact / flops.dense - 0.5) <= 0.02, flops.compact / flops.dense
    assert result.method.family == "sparse" and result.sparsity.group_sparsity > 0


class _Stop(Exception):
    pass


def test_dynamic_mode_resumes_to_the_same_network(tmp_path):
    """Killed after step 5 of 8 (checkpoints every 3 steps, mask updates at 0, 2 and 4, the cut at 6): the resumed
    run ends with the very same parameters and mask as the uninterrupted one."""
    config = DiSparseConfig(mode="dynamic", sparsity=0.4, interval=2)
    torch.manual_seed(0)
    plain = DiSparse(config)
    train(plain, random_nyu_context(steps=8, log_every=1))

    def stop_at_5(done: int, total: int, info: dict | None = None) -> None:
        if done == 5:
            raise _Stop

    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(_Stop):
        train(DiSparse(config), random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3,
              progress=stop_at_5)  # fmt: skip
    resumed = DiSparse(config)
    torch.manual_seed(123)
    train(resumed, random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3)
    state, again = plain.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert all(torch.equal(a, b) for a, b in zip(plain.masks, resumed.masks))
