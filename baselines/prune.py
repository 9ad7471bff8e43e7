"""Post-hoc channel pruning: the control every learned-sparsity method must beat at matched cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtbench.cost import masks_for_flops, masks_for_sparsity
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import Axis, group_norms, group_size, lowest_norm_masks, shared_conv_weights
from mtbench.training import TrainContext, apply_masks


@dataclass
class PruneConfig:
    """Attributes:
    sparsity: fraction of the shared conv channel groups removed (set it to the sparsity of the method
        it controls for). Ignored when ``flops`` is set.
    prune_at: fraction of the step budget trained dense (equal weighting) before pruning; the rest of the
        budget fine-tunes the pruned network with the mask kept, so the total budget equals every method's.
    scope: how groups are ranked. ``global``: by norm relative to their layer's mean (a BatchNorm after each
        conv makes absolute norms incomparable across layers). ``layer``: the same fraction from every layer.
        ``magnitude``: one global ranking by raw magnitude per element, ‖W_g‖₂/√n_g (the textbook global
        magnitude criterion; per element because a group's norm grows with its size n_g = C_out·k², so a raw
        norm would single out the 1×1 projections' small groups whatever their weights).
    axis: group axis, ``in`` (input channels) or ``out``.
    flops: 0 (default): the target is ``sparsity``. Otherwise the target is this fraction of the dense FLOPs
        of the compact network (`mtbench.cost`, as the result's accounting counts them): the lowest-ranked
        groups are removed until the compact FLOPs are as close to it as the groups allow.
    """

    sparsity: float = bounded(0.5, at_least=0, below=1)
    prune_at: float = bounded(0.5, at_least=0, at_most=1)
    scope: Literal["global", "layer", "magnitude"] = "global"
    axis: Literal["in", "out"] = "in"
    flops: float = bounded(0.0, at_least=0, at_most=1)


def prune_scores(weights: list[Tensor], scope: str, axis: Axis = "in") -> list[Tensor]:
    """One score per group (lower goes first) for a global ranking under ``scope``.

    ``layer`` ranks by the group's quantile within its own layer, so any global cut removes about the same
    fraction of every layer.
    """
    norms = [group_norms(w, axis).detach() for w in weights]
    if scope == "global":
        return [n / n.mean().clamp_min(1e-30) for n in norms]
    if scope == "magnitude":
        return [n / group_size(w, axis) ** 0.5 for n, w in zip(norms, weights)]
    if scope == "layer":
        quantiles = []
        for n in norms:
            ranks = torch.empty_like(n)
            ranks[torch.argsort(n, stable=True)] = torch.arange(1, n.numel() + 1, dtype=n.dtype, device=n.device)
            quantiles.append(ranks / n.numel())
        return quantiles
    raise ValueError(f"unknown scope {scope!r}: expected global, layer or magnitude")


class Prune(MTLMethod):
    """Train dense (Σ_k L_k), remove the lowest-ranked shared groups at ``prune_at``, fine-tune with the mask."""

    masks: list[torch.Tensor] | None = None

    def after_step(self, ctx: TrainContext, step: int) -> None:
        cfg: PruneConfig = self.config
        weights = [w for _, w in shared_conv_weights(self.model)]
        if self.masks is None and step + 1 >= max(1, int(cfg.prune_at * ctx.budget.steps)):
            self.masks = self.make_masks(ctx, weights)
        if self.masks is not None:
            apply_masks(weights, self.masks)

    def make_masks(self, ctx: TrainContext, weights: list[Tensor]) -> list[Tensor]:
        """The pruning masks for the current weights (a FLOPs target reads values on the host: the compact
        network's FLOPs are counted on the CPU)."""
        cfg: PruneConfig = self.config
        if not cfg.flops and cfg.scope in ("global", "layer"):
            return lowest_norm_masks(weights, cfg.sparsity, cfg.axis, cfg.scope)  # the published path, unchanged
        scores = prune_scores(weights, cfg.scope, cfg.axis)
        if cfg.flops:
            return masks_for_flops(self.model, scores, cfg.flops, input_size=ctx.train.image_size, axis=cfg.axis)
        return masks_for_sparsity(scores, cfg.sparsity, cfg.axis)


METHOD = MethodInfo(
    name="prune",
    family="sparse",
    summary="dense training, then lowest-norm channel-group pruning to a target sparsity or FLOPs, then fine-tuning",
    method=Prune,
    config=PruneConfig,
    paper="Li, Kadav, Durdanovic, Samet & Graf, Pruning Filters for Efficient ConvNets (2017) — as a control",
    link="https://arxiv.org/abs/1608.08710",
    deviations="prunes the shared backbone's input-channel groups (the sparsity methods' groups) by l2 norm, "
    "ranked globally relative to each layer's mean norm (scope=layer prunes a uniform fraction per layer; "
    "scope=magnitude ranks globally by the per-element norm ‖W_g‖₂/√n_g; the paper prunes output filters by l1 norm "
    "layer by layer with a per-layer sensitivity analysis); the target is a group fraction (sparsity) or, with "
    "flops, a fraction of the compact network's dense FLOPs met by a global cut; a layer always keeps one group; "
    "one-shot at prune_at of the budget, then fine-tuned within the same step budget as every method",
)
