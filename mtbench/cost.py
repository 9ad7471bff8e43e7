"""Inference cost as a pruning target: the compact network's FLOPs, and masks that meet a FLOPs budget.

Sparse methods are compared at the same inference cost, not at the same group sparsity: a zeroed channel group
saves nothing until `mtbench.export.compact` can take a whole channel out (every consumer of the channel must
ignore it), and a group of a 1×1 projection saves far less than one of a 3×3 conv at twice the resolution. The
cost is what a run's result reports (`mtbench.inference.account`): FLOPs of the compact network (zeroed
channels removed; `mtbench.export.count_flops`, PyTorch's FLOP counter: convolutions and matrix products) over
those of the dense network, one image, every head of the network. This module measures exactly that, by
running the same two functions on a copy of the network — it never derives the count on its own.

The input size is the training images' size: ``ctx.train.image_size`` during training (the data are resized
once to the budget's ``resolution`` when they are read), which is what the runner records as the result's
``input_size`` and what the accounting counts at.

Masks keep the convention of `mtbench.sparsity.lowest_norm_masks`: one boolean per group (False = removed),
shaped to broadcast over the kernel (`mtbench.sparsity.group_shape`); groups are removed in ascending order of
their score (ties by position), and a layer's last group is never removed (the greedy walk of
``lowest_norm_masks`` skips a group whose layer is down to its last one): a shared conv that passes nothing
on would cut the network.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtbench.errors import ConfigError
from mtbench.export import compact, count_flops
from mtbench.sparsity import Axis, group_shape, shared_conv_weights


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Run the block outside every active torch dispatch mode: the training loop's FLOP counter does not count it.

    A measurement of inference FLOPs taken inside a training step (a FLOPs target) is bookkeeping, not training
    compute; without this, the step's counter would count the measured network's forward as well.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        yield


def removal_order(scores: Sequence[Tensor]) -> Tensor:
    """Flat indices (layers laid end to end) of the removable groups, lowest score first.

    ``scores`` holds one tensor per shared conv, one value per group (the shape `group_norms` returns; any shape
    with that many elements). Ties break by position. Each layer's last group in this order — its highest-scoring
    one — is left out: removing it would leave the layer with no group.
    """
    flat = torch.cat([s.detach().reshape(-1).to("cpu", torch.float64) for s in scores])
    sizes = torch.tensor([s.numel() for s in scores], dtype=torch.long)
    layer_of = torch.repeat_interleave(torch.arange(len(scores)), sizes)
    order = torch.argsort(flat, stable=True)
    layers = layer_of[order]
    rank = torch.zeros_like(order)  # rank of each group, in ascending order, among its own layer's groups
    for layer in range(len(scores)):
        here = layers == layer
        rank[here] = torch.arange(int(here.sum()))
    return order[rank < sizes[layers] - 1]


def cut_bounds(scores: Sequence[Tensor], masks: Sequence[Tensor]) -> tuple[float | None, float]:
    """Where a cut of ``scores`` reproduces ``masks``: the highest removed score (None when nothing is removed) and
    the lowest kept score above it (above 0 when nothing is removed; inf when there is none). Kept groups at or
    below the removed maximum (a layer's last group, ties) do not bound the cut."""
    flat = torch.cat([s.detach().reshape(-1).to("cpu", torch.float64) for s in scores])
    keep = torch.cat([m.reshape(-1).cpu() for m in masks])
    low = float(flat[~keep].max()) if bool((~keep).any()) else None
    above = flat[keep & (flat > (low or 0.0))]
    return low, float(above.min()) if above.numel() else math.inf


def masks_removing(scores: Sequence[Tensor], count: int, axis: Axis = "in") -> list[Tensor]:
    """Masks removing the first ``count`` groups of `removal_order` (fewer if fewer are removable).

    With the relative norms of ``lowest_norm_masks(..., scope="global")`` as scores and ``count =
    round(sparsity · groups)`` these are exactly its masks (tested).
    """
    keep = torch.ones(sum(s.numel() for s in scores), dtype=torch.bool)
    keep[removal_order(scores)[: max(0, int(count))]] = False
    device = scores[0].device
    shape = group_shape(axis)
    return [k.view(shape).to(device) for k in keep.split([s.numel() for s in scores])]


def masks_for_sparsity(scores: Sequence[Tensor], sparsity: float, axis: Axis = "in") -> list[Tensor]:
    """Masks removing ``round(sparsity · groups)`` groups in `removal_order` (the group-count target)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return masks_removing(scores, round(sparsity * sum(s.numel() for s in scores)), axis)


class FlopsMeter:
    """Compact and dense FLOPs of one network under candidate masks, measured as a run's result measures them.

    Holds a CPU copy of ``model`` (its weights as they are now): each `flops` call writes the shared conv
    weights times the masks into the copy, compacts it (`mtbench.export.compact`) and counts one forward of one
    ``input_size`` image through every head in ``tasks`` (`mtbench.export.count_flops`). ``model`` itself is
    never touched. The network must use BatchNorm (compact export's requirement).

    ``masks_only=True`` measures the structure the masks describe, whatever the weights are: the copy's shared
    conv weights are all set to one, so a group counts as removed exactly where its mask says so (a method that
    regrows a group which is still zero needs this; the count depends only on which groups are zero).
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: Sequence[int],
        tasks: Sequence[str] | None = None,
        *,
        masks_only: bool = False,
    ) -> None:
        self.tasks = list(tasks) if tasks is not None else list(model.heads.keys())
        self.network = copy.deepcopy(model).cpu()
        for param in self.network.parameters():
            param.grad = None
        self.weights = [w for _, w in shared_conv_weights(self.network)]
        self.original = [torch.ones_like(w) if masks_only else w.detach().clone() for w in self.weights]
        self.image = torch.zeros(1, 3, int(input_size[0]), int(input_size[1]))
        with uncounted():
            self.dense = count_flops(self.network, self.image, self.tasks)

    @torch.no_grad()
    def flops(self, masks: Sequence[Tensor] | None = None) -> int:
        """FLOPs of the compact network with every masked-out group zeroed (groups already zero stay zero)."""
        for index, (weight, original) in enumerate(zip(self.weights, self.original)):
            weight.copy_(original if masks is None else original * masks[index].to(original.device))
        try:
            with uncounted():
                network = compact(self.network, fold_bn=False)
                return count_flops(network, self.image, self.tasks)
        except ValueError as error:
            raise ConfigError(
                "the compact FLOPs of this network cannot be measured",
                expected="a BatchNorm network that `mtbench export` can compact",
                found=str(error),
                fix="use a budget whose network uses BatchNorm (every built-in budget does)",
            ) from error

    def fraction(self, masks: Sequence[Tensor] | None = None) -> float:
        """Compact FLOPs / dense FLOPs."""
        return self.flops(masks) / self.dense


def flops_fraction(
    model: nn.Module,
    masks: Sequence[Tensor] | None = None,
    *,
    input_size: Sequence[int],
    tasks: Sequence[str] | None = None,
) -> float:
    """Compact FLOPs / dense FLOPs of ``model`` (a `MultiTaskNet`) if its zero groups of the shared convs — or,
    with ``masks`` (one per `shared_conv_weights` entry, False = removed), those and the masked-out groups — were
    removed: the ratio `mtbench.inference.account` reports for the trained network.

    Args:
        input_size: ``(H, W)`` of one image; during training ``ctx.train.image_size``.
        tasks: the heads counted (default: every head of ``model``).
    """
    return FlopsMeter(model, input_size, tasks).fraction(masks)


@dataclass
class FlopsSearch:
    """What `search_flops` found: the masks, their FLOPs fraction, the groups they remove, measurements taken."""

    masks: list[Tensor]
    fraction: float
    removed: int
    evaluations: int


def search_flops(
    meter: FlopsMeter, scores: Sequence[Tensor], target: float, axis: Axis = "in"
) -> FlopsSearch:
    """Bisection over the number of groups removed in `removal_order` for the FLOPs fraction nearest ``target``.

    Removing more groups of one order never adds a channel, so the fraction does not rise with the count; the
    search keeps ``lo`` above the target and ``hi`` at or below it, then takes whichever of the two is nearer
    (the cheaper one on a tie). A target below what removing every removable group reaches gives that floor; a
    target at or above the fraction with nothing removed removes nothing.
    """
    order_length = len(removal_order(scores))
    measured: dict[int, float] = {}

    def fraction(count: int) -> float:
        if count not in measured:
            measured[count] = meter.fraction(masks_removing(scores, count, axis))
        return measured[count]

    if fraction(0) <= target:
        best = 0
    elif fraction(order_length) >= target:
        best = order_length
    else:
        lo, hi = 0, order_length
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fraction(mid) <= target:
                hi = mid
            else:
                lo = mid
        best = lo if abs(fraction(lo) - target) < abs(fraction(hi) - target) else hi
    return FlopsSearch(masks_removing(scores, best, axis), fraction(best), best, len(measured))


def masks_for_flops(
    model: nn.Module,
    scores: Sequence[Tensor],
    target: float,
    *,
    input_size: Sequence[int],
    axis: Axis = "in",
    tasks: Sequence[str] | None = None,
) -> list[Tensor]:
    """Masks removing the lowest-scoring groups (one global ranking, `removal_order`) until the compact FLOPs
    fraction (`flops_fraction`) is as close as it gets to ``target``.

    Args:
        model: the network whose FLOPs count (its current weights: groups already zero stay zero).
        scores: one non-negative score per group of each shared conv (the shape `group_norms` returns).
        target: the wanted fraction of the dense FLOPs, in (0, 1].
        input_size: ``(H, W)`` of one image; during training ``ctx.train.image_size``.
        axis: the group axis of ``scores`` and of the masks.
        tasks: the heads counted (default: every head of ``model``).
    """
    if not 0 < target <= 1:
        raise ValueError(f"the FLOPs target must be in (0, 1], got {target}")
    return search_flops(FlopsMeter(model, input_size, tasks), scores, target, axis).masks


__all__ = [
    "FlopsMeter",
    "FlopsSearch",
    "flops_fraction",
    "masks_for_flops",
    "masks_for_sparsity",
    "masks_removing",
    "removal_order",
    "search_flops",
    "uncounted",
]
