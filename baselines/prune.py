"""Post-hoc channel pruning: the control every learned-sparsity method must beat at matched sparsity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import lowest_norm_masks, shared_conv_weights
from mtbench.training import TrainContext, apply_masks


@dataclass
class PruneConfig:
    """Attributes:
    sparsity: fraction of the shared conv channel groups removed (set it to the sparsity of the method
        it controls for).
    prune_at: fraction of the step budget trained dense (equal weighting) before pruning; the rest of the
        budget fine-tunes the pruned network with the mask kept, so the total budget equals every method's.
    scope: ``global`` (groups ranked by norm relative to their layer's mean) or ``layer`` (the same
        fraction from every layer).
    axis: group axis, ``in`` (input channels) or ``out``.
    """

    sparsity: float = bounded(0.5, at_least=0, below=1)
    prune_at: float = bounded(0.5, at_least=0, at_most=1)
    scope: Literal["global", "layer"] = "global"
    axis: Literal["in", "out"] = "in"


class Prune(MTLMethod):
    """Train dense (Σ_k L_k), remove the lowest-norm shared groups at ``prune_at``, fine-tune with the mask."""

    masks: list[torch.Tensor] | None = None

    def after_step(self, ctx: TrainContext, step: int) -> None:
        cfg: PruneConfig = self.config
        weights = [w for _, w in shared_conv_weights(self.model)]
        if self.masks is None and step + 1 >= max(1, int(cfg.prune_at * ctx.budget.steps)):
            self.masks = lowest_norm_masks(weights, cfg.sparsity, cfg.axis, cfg.scope)
        if self.masks is not None:
            apply_masks(weights, self.masks)


METHOD = MethodInfo(
    name="prune",
    family="sparse",
    summary="dense training, then lowest-norm channel-group pruning to a target sparsity, then fine-tuning",
    method=Prune,
    config=PruneConfig,
    paper="Li, Kadav, Durdanovic, Samet & Graf, Pruning Filters for Efficient ConvNets (2017) — as a control",
    link="https://arxiv.org/abs/1608.08710",
    deviations="prunes the shared backbone's input-channel groups (the sparsity methods' groups) by l2 norm, "
    "ranked globally relative to each layer's mean norm (scope=layer prunes a uniform fraction per layer); "
    "one-shot at prune_at of the budget, then fine-tuned within the same step budget as every method",
)
