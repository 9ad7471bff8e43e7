"""The cost target (`mtbench.cost`): compact FLOPs by hand, against the result's accounting, and masks that meet it;
prune's FLOPs target and its global magnitude ranking."""

from __future__ import annotations

import copy

import pytest
import torch
from mtbench_baselines.prune import PruneConfig, prune_scores
from torch import nn

from mtbench import catalog
from mtbench.cost import FlopsMeter, flops_fraction, masks_for_flops, masks_removing, removal_order, search_flops
from mtbench.inference import Network, RunModel, account
from mtbench.models import BasicBlock, DenseHead, MultiTaskNet, init_seeded
from mtbench.presets import BUDGETS
from mtbench.sparsity import group_norms, lowest_norm_masks, shared_conv_weights
from mtbench.training import apply_masks


class TinyNet(nn.Module):
    """A `MultiTaskNet`-shaped network with a hand-sized backbone and one dense head (5 hidden, 2 out)."""

    def __init__(self, backbone: nn.Sequential, channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({"t": DenseHead(channels, 2, "batch", hidden=5)})

    def forward(self, images: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {t: self.heads[t](features, images.shape[-2:]) for t in tasks}


def _unit(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _masks(model: nn.Module, removed: dict[int, list[int]]) -> list[torch.Tensor]:
    masks = []
    for index, (_, weight) in enumerate(shared_conv_weights(model)):
        keep = torch.ones(weight.shape[1], dtype=torch.bool)
        keep[removed.get(index, [])] = False
        masks.append(keep.view(1, -1, 1, 1))
    return masks


def test_flops_of_a_chain_by_hand():
    """8×8 image; torch counts a conv as 2·C_out·C_in·k²·H·W. conv1 3→4, conv2 4→6, head 3×3 6→5 and 1×1 5→2:
    dense 13824 + 27648 + 34560 + 1280 = 77312. Removing conv2's input group 1 takes conv1's filter 1 out too:
    10368 + 20736 + 35840 = 66944; removing also conv1's group 0 (image channel 0, never read): 6912 + 20736 +
    35840 = 63488."""
    model = init_seeded(TinyNet(nn.Sequential(*_unit(3, 4), *_unit(4, 6)), 6), 0).eval()
    assert FlopsMeter(model, (8, 8)).dense == 77312
    assert flops_fraction(model, input_size=(8, 8)) == 1.0
    assert flops_fraction(model, _masks(model, {1: [1]}), input_size=(8, 8)) == 66944 / 77312
    assert flops_fraction(model, _masks(model, {0: [0], 1: [1]}), input_size=(8, 8)) == 63488 / 77312
    zeroed = copy.deepcopy(model)  # the model's own zero groups count as masks do
    apply_masks([w for _, w in shared_conv_weights(zeroed)], _masks(zeroed, {0: [0], 1: [1]}))
    assert flops_fraction(zeroed, input_size=(8, 8)) == 63488 / 77312


def test_flops_of_a_residual_block_by_hand():
    """stem 3→4, a BasicBlock 4→4 (identity shortcut), head 3×3 4→5 and 1×1 5→2 on 8×8: dense 13824 + 18432 +
    18432 + 23040 + 1280 = 75008. A zero group of the block's conv1 saves nothing (the shortcut still reads the
    channel); one of conv2 takes conv1's filter out: 13824 + 13824 + 13824 + 23040 + 1280 = 65792."""
    model = init_seeded(TinyNet(nn.Sequential(*_unit(3, 4), BasicBlock(4, 4, 1, 1, "batch")), 4), 0).eval()
    assert [name for name, _ in shared_conv_weights(model)] == ["0", "3.conv1", "3.conv2"]
    assert FlopsMeter(model, (8, 8)).dense == 75008
    assert flops_fraction(model, _masks(model, {1: [2]}), input_size=(8, 8)) == 1.0
    assert flops_fraction(model, _masks(model, {2: [2]}), input_size=(8, 8)) == 65792 / 75008


def _network(arch_name: str, tasks: tuple[str, ...], seed: int = 0) -> MultiTaskNet:
    model = MultiTaskNet(BUDGETS[arch_name].arch, [catalog.task("nyuv2", t) for t in tasks])
    return init_seeded(model, seed).eval()


@pytest.mark.parametrize("axis", ["in", "out"])
def test_flops_fraction_is_what_the_accounting_reports(axis):
    """A random mask (a third of the groups) on the smoke network: the fraction equals the compact / dense FLOPs
    of `mtbench.inference.account` (export.compact + count_flops) on the masked network, exactly."""
    model = _network("smoke", ("semseg", "normal"))
    weights = [w for _, w in shared_conv_weights(model)]
    generator = torch.Generator().manual_seed(1)
    masks = masks_removing([torch.rand(group_norms(w, axis).numel(), generator=generator) for w in weights],
                           sum(group_norms(w, axis).numel() for w in weights) // 3, axis)
    masked = copy.deepcopy(model)
    apply_masks([w for _, w in shared_conv_weights(masked)], masks)
    accounting = account(RunModel(None, [Network(["semseg", "normal"], masked)], (24, 32)))  # type: ignore[arg-type]
    fraction = flops_fraction(model, masks, input_size=(24, 32))
    assert fraction == accounting.flops.compact / accounting.flops.dense
    assert 0.3 < fraction < 0.95


def test_removal_order_is_lowest_norm_masks_order():
    """Ranked by norm relative to the layer's mean, `masks_removing` gives `lowest_norm_masks`' masks (ties,
    one-group layers, up to 99 % sparsity): one convention for which groups go and which layer keeps one."""
    generator = torch.Generator().manual_seed(5)
    for trial in range(60):
        sizes = [[1, 3, 6, 9][(trial + i) % 4] for i in range(1 + trial % 4)]
        weights = [torch.randn(2, size, 1, 1, generator=generator) for size in sizes]
        if trial % 3 == 0:
            weights = [w.round() for w in weights]
        sparsity = [0.0, 0.2, 0.5, 0.8, 0.99][trial % 5]
        expected = lowest_norm_masks(weights, sparsity, "in", "global")
        scores = prune_scores(weights, "global")
        found = masks_removing(scores, round(sparsity * sum(s.numel() for s in scores)))
        assert all(torch.equal(a, b) for a, b in zip(expected, found)), trial


@pytest.mark.parametrize("target", [0.25, 0.5, 0.75])
def test_flops_targets_are_met_on_the_quick_network(target):
    """The quick network with one dense head at the nyuv2-synth size (96×128): the target is met within ±0.02 of
    the dense FLOPs, the masks measure as found, and no layer loses its last group."""
    model = _network("quick", ("semseg",))
    weights = [w for _, w in shared_conv_weights(model)]
    scores = prune_scores(weights, "global")
    found = search_flops(FlopsMeter(model, (96, 128)), scores, target)
    assert abs(found.fraction - target) <= 0.02, found.fraction
    masks = masks_for_flops(model, scores, target, input_size=(96, 128))
    assert all(torch.equal(a, b) for a, b in zip(masks, found.masks))
    assert flops_fraction(model, masks, input_size=(96, 128)) == found.fraction
    assert all(m.any() for m in masks) and found.evaluations <= 12


def test_an_unreachable_target_gives_the_floor():
    """With two dense heads (never pruned: about 27 % of the quick network's FLOPs), 0.25 is out of reach: every
    removable group goes and the fraction is the floor, above the target."""
    model = _network("quick", ("semseg", "normal"))
    scores = prune_scores([w for _, w in shared_conv_weights(model)], "global")
    found = search_flops(FlopsMeter(model, (96, 128)), scores, 0.25)
    assert found.removed == len(removal_order(scores)) and 0.25 < found.fraction < 0.35


def test_magnitude_scope_ranks_by_norm_per_element():
    """A 1×1 layer's group of norm 1 (one element, per-element 1) against a 3×3 layer's of norm 2 (9 elements,
    per-element 2/3): by raw norm the 1×1 group would go first, per element the 3×3 one does."""
    small = torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)
    large = torch.zeros(1, 2, 3, 3)
    large[0, 0] = 2.0 / 3.0  # norm 2, 2/3 per element
    large[0, 1] = 10.0
    scores = prune_scores([small, large], "magnitude")
    assert torch.allclose(scores[0], torch.tensor([1.0, 5.0]))
    assert torch.allclose(scores[1], torch.tensor([2 / 3, 10.0]))
    first, second = masks_removing(scores, 1)
    assert first.flatten().tolist() == [True, True] and second.flatten().tolist() == [False, True]


def test_prune_defaults_are_unchanged():
    assert (PruneConfig().sparsity, PruneConfig().scope, PruneConfig().flops) == (0.5, "global", 0.0)
