"""AdapMTL: the group soft-threshold's gradient against finite differences, exact zeros in the effective and the
compact network, the adaptive weights by hand, the projection, FLOPs targets on smoke runs, and resuming."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_nyu_context
from mtbench_baselines.adapmtl import (
    AdapMTL,
    AdapMTLConfig,
    project_weights,
    projection_cut,
    relative_norms,
    soft_threshold,
)
from torch import nn

from mtbench.cost import flops_fraction
from mtbench.export import compact
from mtbench.models import DenseHead, init_seeded
from mtbench.protocol import finetune
from mtbench.runner import RunRequest, execute
from mtbench.sparsity import group_norms, shared_conv_weights
from mtbench.training import train


def _tiny_loss(weights: list[torch.Tensor], s: torch.Tensor, axis: str, scale: str) -> torch.Tensor:
    """Two convs (3 → 6, 3×3; 6 → 4, 1×1) with soft-thresholded kernels, squared error to a fixed target."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 5, 5, generator=generator, dtype=torch.float64)
    target = torch.randn(2, 4, 5, 5, generator=generator, dtype=torch.float64)
    tau = 2.0 * torch.sigmoid(s)
    first, second = (soft_threshold(w, tau, axis, scale) for w in weights)
    hidden = F.relu(F.conv2d(images, first, padding=1))
    return (F.conv2d(hidden, second) - target).pow(2).mean()


@pytest.mark.parametrize(("axis", "scale"), [("in", "layer"), ("out", "layer"), ("in", "none")])
def test_threshold_gradient_matches_central_differences(axis, scale):
    """∂loss/∂s (and ∂loss/∂W for a few weights) by autograd through the group soft-threshold equal central
    differences in float64, at an s where some groups are zero and none sits within the step of its kink."""
    generator = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(6, 3, 3, 3, generator=generator, dtype=torch.float64),
        torch.randn(4, 6, 1, 1, generator=generator, dtype=torch.float64),
    ]
    for w in weights:  # group norms spread over a factor ~4, so that a threshold zeroes some and keeps others
        groups = w.shape[1] if axis == "in" else w.shape[0]
        spread = torch.linspace(0.5, 2.0, groups, dtype=torch.float64)
        w.mul_(spread.view(1, -1, 1, 1) if axis == "in" else spread.view(-1, 1, 1, 1))
    ratios = torch.cat([relative_norms(w, axis, scale) for w in weights])
    s = torch.tensor(math.log(0.45 / 0.55), dtype=torch.float64)  # τ = 2·sigmoid(s) = 0.9
    tau = float(2 * torch.sigmoid(s))
    zero = ratios <= tau
    assert zero.any() and (~zero).any()
    assert float((ratios - tau).abs().min()) > 1e-3  # no group within the step of its kink

    s_var = s.clone().requires_grad_(True)
    leaves = [w.clone().requires_grad_(True) for w in weights]
    loss = _tiny_loss(leaves, s_var, axis, scale)
    grad_s, *grad_w = torch.autograd.grad(loss, [s_var, *leaves])
    step = 1e-6
    numeric = (_tiny_loss(weights, s + step, axis, scale) - _tiny_loss(weights, s - step, axis, scale)) / (2 * step)
    assert abs(float(grad_s)) > 1e-4
    assert float(grad_s) == pytest.approx(float(numeric), rel=1e-6, abs=1e-10)
    for layer, index in ((0, (1, 2, 0, 1)), (0, (4, 0, 2, 2)), (1, (2, 3, 0, 0)), (1, (0, 5, 0, 0))):
        plus, minus = [w.clone() for w in weights], [w.clone() for w in weights]
        plus[layer][index] += step
        minus[layer][index] -= step
        numeric = (_tiny_loss(plus, s, axis, scale) - _tiny_loss(minus, s, axis, scale)) / (2 * step)
        assert float(grad_w[layer][index]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-10)


class TinyNet(nn.Module):
    """A `MultiTaskNet`-shaped network: conv 3 → 4, conv 4 → 6 (3×3, BatchNorm, ReLU), one dense head."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 4), (4, 6)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.backbone = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({"t": DenseHead(6, 2, "batch", hidden=5)})

    def forward(self, images: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {t: self.heads[t](features, images.shape[-2:]) for t in tasks}


def test_a_group_below_its_threshold_is_exactly_zero_and_leaves_the_compact_network():
    """conv2's input group 1 scaled to 1 % is below τ = 0.5 layer RMS: exactly zero in the effective kernel, the
    other groups shrunk by hand (W_g · (1 − τ·u·√n_g/‖W_g‖)); written into the network, the compact export drops
    the channel (conv1's filter 1 with it: 66944 of 77312 FLOPs, as tests/test_cost.py works out by hand) and
    computes the same outputs."""
    model = init_seeded(TinyNet(), 0).eval()
    conv2 = model.backbone[3].weight
    with torch.no_grad():
        conv2[:, 1] *= 0.01
    tau = 0.5
    effective = soft_threshold(conv2.detach(), tau)
    assert torch.equal(effective[:, 1], torch.zeros_like(effective[:, 1]))
    unit = conv2.detach().pow(2).mean().sqrt()
    for group in (0, 2, 3):
        kept = conv2.detach()[:, group]
        factor = 1 - tau * unit * math.sqrt(6 * 9) / kept.norm()
        assert 0 < float(factor) < 1
        assert torch.allclose(effective[:, group], kept * factor, rtol=1e-6, atol=0)
    assert float(relative_norms(conv2)[1]) < tau < float(relative_norms(conv2)[[0, 2, 3]].min())
    with torch.no_grad():
        for _, weight in shared_conv_weights(model):
            weight.copy_(soft_threshold(weight, tau))
    assert (group_norms(model.backbone[0].weight) > 0).all()  # conv1 keeps all its (image) groups
    assert flops_fraction(model, input_size=(8, 8)) == 66944 / 77312
    net = compact(model)
    assert tuple(net.backbone[1].conv.weight.shape) == (6, 3, 3, 3)
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(images, ["t"])["t"], model(images, ["t"])["t"], atol=1e-5)


def test_the_projection_keeps_what_the_threshold_kept_and_brings_back_what_it_must():
    """Ratios (0.2, 0.5, 0.8, 1.5) of one layer, learned τ = 0.6. Cut after one group (a target the threshold
    overshot): t = (0.2 + 0.5)/2, group 1 comes back soft-thresholded at t, groups 2 and 3 keep their values under τ.
    Cut after three (undershot: τ would keep group 2): t = (0.8 + 1.5)/2, and group 3 keeps its value under τ.
    A cut the learned τ already makes leaves it as it is (multiplier 1)."""
    weight = torch.zeros(2, 4, 1, 1)
    weight[0, :, 0, 0] = torch.tensor([0.2, 0.5, 0.8, 1.5])
    ratios = torch.tensor([0.2, 0.5, 0.8, 1.5])  # unit 1, n_g = 2: ‖W_g‖/√2
    weight *= math.sqrt(2)
    keep = torch.tensor([False, True, True, True]).view(1, -1, 1, 1)
    cut = projection_cut([ratios], [keep], 0.6)
    assert cut == pytest.approx(0.35)
    projected = project_weights(weight, keep, ratios, 0.6, cut)
    expected = weight[0, :, 0, 0] * torch.tensor([0.0, 1 - 0.35 / 0.5, 1 - 0.6 / 0.8, 1 - 0.6 / 1.5])
    assert torch.allclose(projected[0, :, 0, 0], expected)
    keep = torch.tensor([False, False, False, True]).view(1, -1, 1, 1)
    assert projection_cut([ratios], [keep], 0.6) == pytest.approx(1.15)
    assert projection_cut([ratios], [torch.tensor([False, True, True, True]).view(1, -1, 1, 1)], 0.3) == 0.3
    projected = project_weights(weight, keep, ratios, 0.6, 1.15)
    assert torch.equal(projected[0, :3, 0, 0], torch.zeros(3))
    assert torch.allclose(projected[0, 3, 0, 0], weight[0, 3, 0, 0] * (1 - 0.6 / 1.5))


def test_adaptive_weights_follow_the_relative_loss_changes_by_hand():
    """10 steps, begin 0.2 (step 2), window 0.2 (2 steps). Losses per step for two tasks; from step 4 on the weight
    of a task is the mean of its last two relative changes |L(i−1) − L(i)|/L(i), scaled to sum to 2."""
    ctx = random_nyu_context(steps=10)
    ctx = type(ctx)(ctx.budget, ctx.seen[:2], ctx.train, ctx.seed, ctx.device)
    method = AdapMTL(AdapMTLConfig(adaptive_begin=0.2, window=0.2))
    method.setup(ctx)
    losses = [(4.0, 1.0), (4.0, 1.0), (4.0, 1.0), (2.0, 2.0), (1.0, 1.0), (1.0, 0.5)]
    got = [method.weigh(ctx, step, torch.tensor(pair)).tolist() for step, pair in enumerate(losses)]
    assert got[:4] == [[1.0, 1.0]] * 4  # before begin, then the window fills (changes at steps 3 and 4)
    a, b = (1.0 + 1.0) / 2, (0.5 + 1.0) / 2  # step 4: task a 2/2 and 1/1, task b 1/2 and 1/1
    assert got[4] == pytest.approx([2 * a / (a + b), 2 * b / (a + b)])
    a, b = (1.0 + 0.0) / 2, (1.0 + 1.0) / 2  # step 5: a 1/1 and 0/1, b 1/1 and 0.5/0.5
    assert got[5] == pytest.approx([2 * a / (a + b), 2 * b / (a + b)])
    equal = AdapMTL(AdapMTLConfig(weighting="equal", adaptive_begin=0.0, window=0.1))
    equal.setup(ctx)
    assert all(equal.weigh(ctx, i, torch.tensor(p)).tolist() == [1.0, 1.0] for i, p in enumerate(losses))


def test_the_network_holds_the_effective_weights_and_the_meta_test_keeps_the_mask():
    """Before the projection the network's shared kernels are the thresholded latents; after it they are the
    masked latents, their zero groups exactly the mask's, at the group target; fine-tuning a copy as the meta-test
    does keeps every zero group zero."""
    ctx = random_nyu_context(steps=8, log_every=1)
    method = AdapMTL(AdapMTLConfig(sparsity=0.4))
    method.setup(ctx)
    for step in range(method.end_step(ctx)):
        method.step(ctx, step)
    assert method.masks is None
    tau = method.tau().detach()
    for (_, weight), latent in zip(shared_conv_weights(method.model), method.latent):
        assert torch.equal(weight, soft_threshold(latent.detach(), tau))
    for step in range(method.end_step(ctx), 8):
        method.step(ctx, step)
    assert method.masks is not None
    zero = torch.cat([group_norms(w) == 0 for _, w in shared_conv_weights(method.model)])
    assert torch.equal(zero, ~torch.cat([m.flatten() for m in method.masks]))
    assert int(zero.sum()) == round(0.4 * zero.numel())
    for (_, weight), latent, mask in zip(shared_conv_weights(method.model), method.latent, method.masks):
        assert torch.equal(weight, latent.detach() * mask)
    task = ctx.seen[0]
    tuned = finetune(copy.deepcopy(method.model), task, ctx.train, ctx, seed=5, steps=3)
    after = torch.cat([group_norms(w) == 0 for _, w in shared_conv_weights(tuned)])
    assert torch.equal(after, zero)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_smoke_runs_meet_their_flops_target(nyu_mtan, tmp_path, target):
    """Through `mtbench.runner.execute` at the smoke budget: the result's own accounting (compact ÷ dense FLOPs of
    the trained network, heads of the seen tasks) is within ±0.02 of the target."""
    request = RunRequest(
        method="adapmtl", data_root=nyu_mtan, budget="smoke", unseen=("depth",), overrides={"flops": str(target)},
        out=tmp_path / "adapmtl", reference=False,
    )  # fmt: skip
    result = execute(request).result
    flops = result.inference.flops
    assert abs(flops.compact / flops.dense - target) <= 0.02, flops.compact / flops.dense
    assert result.method.family == "sparse" and result.sparsity.group_sparsity > 0


class _Stop(Exception):
    pass


def test_resuming_mid_training_gives_the_same_network(tmp_path):
    """Killed after step 5 of 8 (checkpoints every 3 steps; adaptive weights from step 1 over 2 steps, the
    projection onto a FLOPs target at step 6): the resumed run ends with the very same parameters, latents,
    threshold, mask and task weights as the uninterrupted one."""
    config = AdapMTLConfig(flops=0.6, adaptive_begin=0.125, window=0.25, check_every=1)
    torch.manual_seed(0)
    plain = AdapMTL(config)
    done = train(plain, random_nyu_context(steps=8, log_every=1))

    def stop_at_5(done: int, total: int, info: dict | None = None) -> None:
        if done == 5:
            raise _Stop

    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(_Stop):
        train(AdapMTL(config), random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3,
              progress=stop_at_5)  # fmt: skip
    resumed = AdapMTL(config)
    torch.manual_seed(123)
    again = train(resumed, random_nyu_context(steps=8, log_every=1), checkpoint=checkpoint, every=3)
    assert again.resumed_from == 3 and again.history == done.history
    state, other = plain.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    assert all(torch.equal(a, b) for a, b in zip(plain.latent, resumed.latent))
    assert all(torch.equal(a, b) for a, b in zip(plain.masks, resumed.masks))
    assert torch.equal(plain.threshold, resumed.threshold) and torch.equal(plain.task_weights, resumed.task_weights)
    assert plain.multiplier == resumed.multiplier
    assert not torch.equal(plain.task_weights, torch.ones_like(plain.task_weights))  # the weighting did act
