"""DiSparse (Sun et al., CVPR 2022): disentangled multi-task pruning, on the shared conv channel groups.

Each task judges every group of the shared backbone on its own loss alone (through the backbone and its own
head); a group is removed only where no task needs it. Two variants, as in the paper:

* ``mode="static"``: prune once before training (at initialisation, ``prune_at=0``), then train with the mask.
  A task's importance of a group is its connection sensitivity (SNIP), Σ_{i∈g} |θ_i · ∂L_t/∂θ_i|, averaged over
  ``score_batches`` training batches. Every task keeps its own top-k groups, the same k for every task; the
  shared mask is the union of the tasks' keep-sets (a group goes only when every task drops it), with k chosen
  so that the union meets the target.
* ``mode="dynamic"``: sparse training from the start at the target (the paper's RigL-style schedule). The mask
  starts random at the target; every ``interval`` steps until ``end`` of the budget it drops the fraction α of
  the active groups of each layer with the smallest norm (α = ``prune_rate``, cosine-decayed to 0 at ``end``),
  and each task regrows, by its own gradient magnitude Σ_{i∈g} |∂L_t/∂θ_i| on the current batch, the inactive
  groups that bring the network back to the target; the shared mask grows the union of the tasks' choices (a
  group comes back when any task asks for it), with the values it had when it was dropped. At ``end`` the
  groups of smallest norm are removed to the target, and the mask stays fixed for the rest of the budget.

The target is a fraction of the dense FLOPs of the compact network (``flops``, `mtbench.cost`) or a fraction
of the groups (``sparsity``), like `prune`'s. Steps that change the mask read values on the host (the compact
network's FLOPs are counted on the CPU); the other steps do not.

Training compute: the engine counts FLOPs on a sample of steps (every ``FLOP_COUNT_EVERY``-th logged one) and
extrapolates; a one-off or periodic cost on a sampled step would be multiplied by the sampling interval (the
dynamic updates every 50 steps fall on every sampled step of the quick budget). The mask updates therefore run
outside the counter, and the run's training FLOPs leave them out: static, ``score_batches`` × (one forward and
one backward per task) once; dynamic, one such pass on one batch per update.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtbench.cost import FlopsMeter, masks_for_sparsity, search_flops, uncounted
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import Axis, group_dims, group_norms, shared_conv_weights
from mtbench.training import Batch, TrainContext, apply_masks

#: The salt of the batches that score the groups before a static prune (a stream apart from the training batches).
SCORE_SALT = 41


@dataclass
class DiSparseConfig:
    """Attributes:
    mode: ``static`` (prune once, then train with the mask) or ``dynamic`` (prune and regrow during training).
    sparsity: fraction of the shared conv channel groups removed. Ignored when ``flops`` is set.
    flops: 0 (default): the target is ``sparsity``. Otherwise the target is this fraction of the dense FLOPs of
        the compact network (`mtbench.cost`, as the result's accounting counts them).
    score_batches: static: training batches the connection sensitivities are averaged over (the authors' code:
        50 batches of 16).
    prune_at: static: fraction of the step budget trained dense before the prune (0: at initialisation, the
        paper's static setting).
    interval: dynamic: steps between two mask updates (the paper: 50).
    prune_rate: dynamic: α, the fraction of each layer's active groups dropped at the first update, cosine-decayed
        to 0 at ``end`` (the paper: 0.5).
    end: dynamic: fraction of the step budget after which the mask is fixed (the paper: 15,000 of 20,000
        iterations, 0.75).
    axis: group axis, ``in`` (input channels, the sparsity methods' groups) or ``out``.
    """

    mode: Literal["static", "dynamic"] = "static"
    sparsity: float = bounded(0.5, at_least=0, below=1)
    flops: float = bounded(0.0, at_least=0, at_most=1)
    score_batches: int = bounded(50, at_least=1)
    prune_at: float = bounded(0.0, at_least=0, below=1)
    interval: int = bounded(50, at_least=1)
    prune_rate: float = bounded(0.5, at_least=0, at_most=1)
    end: float = bounded(0.75, above=0, at_most=1)
    axis: Literal["in", "out"] = "in"


# --- scores and the disentangled rule --------------------------------------------------------------------------


def group_saliency(weights: Sequence[Tensor], grads: Sequence[Tensor | None], axis: Axis = "in") -> list[Tensor]:
    """Connection sensitivity of each group: Σ_{i∈g} |θ_i · g_i| (0 where a weight got no gradient)."""
    return [
        torch.zeros(w.shape[1 if axis == "in" else 0], device=w.device)
        if g is None
        else (w.detach() * g).abs().sum(dim=group_dims(axis))
        for w, g in zip(weights, grads)
    ]


def group_gradient(weights: Sequence[Tensor], grads: Sequence[Tensor | None], axis: Axis = "in") -> list[Tensor]:
    """Gradient magnitude of each group: Σ_{i∈g} |g_i| (RigL's growth criterion, summed over the group)."""
    return [
        torch.zeros(w.shape[1 if axis == "in" else 0], device=w.device)
        if g is None
        else g.abs().sum(dim=group_dims(axis))
        for w, g in zip(weights, grads)
    ]


def task_scores(
    model: nn.Module,
    batches: Iterable[Batch],
    losses: Callable[[nn.Module, Batch], Mapping[str, Tensor]],
    axis: Axis = "in",
    score: Callable[..., list[Tensor]] = group_saliency,
) -> dict[str, list[Tensor]]:
    """Each task's score of every group of the shared convs, from that task's loss alone, averaged over
    ``batches``.

    ``losses(network, batch)`` gives the per-task losses (the training context's `TrainContext.losses`); task t's
    gradient reaches the shared convs through the backbone and t's own head only. Each batch's scores are taken
    (absolute values per batch, as the authors' code sums them) before the average. Runs on a copy of ``model``,
    so its BatchNorm running statistics are left as they were.
    """
    network = copy.deepcopy(model)
    network.train()
    weights = [w for _, w in shared_conv_weights(network)]
    totals: dict[str, list[Tensor]] = {}
    count = 0
    for batch in batches:
        per_task = losses(network, batch)
        for task, loss in per_task.items():
            grads = torch.autograd.grad(loss, weights, retain_graph=True, allow_unused=True)
            scores = score(weights, grads, axis)
            totals[task] = scores if task not in totals else [a + b for a, b in zip(totals[task], scores)]
        count += 1
    return {task: [s / count for s in scores] for task, scores in totals.items()}


def _ranks(scores: Sequence[Tensor]) -> Tensor:
    """Rank of every group (layers end to end) in one task's descending order: 0 = most important."""
    flat = torch.cat([s.detach().reshape(-1).to("cpu", torch.float64) for s in scores])
    order = torch.argsort(flat, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel())
    return ranks


def _like(flat: Tensor, scores: Sequence[Tensor]) -> list[Tensor]:
    return [piece.view(s.shape).to(s.device) for piece, s in zip(flat.split([s.numel() for s in scores]), scores)]


def disentangled_keep(per_task: Mapping[str, Sequence[Tensor]], keep: int) -> list[Tensor]:
    """The paper's rule at one per-task budget: every task keeps its ``keep`` best groups (one ranking over all
    layers), and the shared mask keeps the union — a group is dropped only when every task drops it."""
    kept = torch.stack([_ranks(scores) < keep for scores in per_task.values()]).any(dim=0)
    return _like(kept, next(iter(per_task.values())))


def disentangled_scores(per_task: Mapping[str, Sequence[Tensor]]) -> list[Tensor]:
    """One importance per group whose ascending order removes groups as `disentangled_keep` does, one budget at a
    time: a group's importance is set by its best rank over the tasks, so the kept groups for any removal count
    are the union of the tasks' top-k for the matching k.

    Groups of equal best rank (at most one per task) are ordered by their largest share of a task's total score
    (the authors' per-task normalisation), so a target can fall between two budgets k and k + 1.
    """
    first = next(iter(per_task.values()))
    total = sum(s.numel() for s in first)
    best_rank = torch.full((total,), total, dtype=torch.long)
    best_share = torch.zeros(total, dtype=torch.float64)
    for scores in per_task.values():
        flat = torch.cat([s.detach().reshape(-1).to("cpu", torch.float64) for s in scores])
        best_rank = torch.minimum(best_rank, _ranks(scores))
        best_share = torch.maximum(best_share, flat / flat.sum().clamp_min(1e-300))
    return _like((total - best_rank).double() + 0.5 * best_share, first)


def relative(scores: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's scores over their mean: comparable across layers, whose scales a BatchNorm after each conv
    sets apart."""
    return [s / s.mean().clamp_min(1e-30) for s in scores]


def cosine_rate(initial: float, step: int, end: int) -> float:
    """α at ``step``: ``initial`` decayed to 0 at ``end`` along a half cosine (the authors' schedule)."""
    return 0.5 * initial * (1 + math.cos(math.pi * min(step, end) / max(end, 1)))


# --- the method ------------------------------------------------------------------------------------------------


class DiSparse(MTLMethod):
    """Σ_k L_k on the shared network with a disentangled channel-group mask (static or dynamic, see the module)."""

    masks: list[Tensor] | None = None
    #: dynamic: every shared conv's weights as its groups last held them while active (their initial values for a
    #: group never active); a regrown group resumes them, as in the authors' code (which keeps pruned weights)
    dormant: list[Tensor] | None = None

    def weights(self) -> list[Tensor]:
        return [w for _, w in shared_conv_weights(self.model)]

    def end_step(self, ctx: TrainContext) -> int:
        """Dynamic: the step at which the mask is cut to the target and fixed."""
        return max(0, min(round(self.config.end * ctx.budget.steps), ctx.budget.steps - 1))

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor]:
        with uncounted():  # see the module docstring: the scoring passes are not in the sampled training FLOPs
            masks = self.update(ctx, step)
        if masks is not None:
            self.masks = masks
            apply_masks(self.weights(), masks)
        return super().step(ctx, step)

    def after_step(self, ctx: TrainContext, step: int) -> None:
        if self.masks is not None:
            apply_masks(self.weights(), self.masks)  # after Adam's step, so its momentum cannot revive a group

    def update(self, ctx: TrainContext, step: int) -> list[Tensor] | None:
        """The mask from this step on, where this step changes it (before its forward); None otherwise."""
        cfg: DiSparseConfig = self.config
        if cfg.mode == "static":
            if self.masks is None and step >= int(cfg.prune_at * ctx.budget.steps):
                return self.static_masks(ctx)
            return None
        end = self.end_step(ctx)
        masks = self.masks
        if masks is None:
            self.dormant = [w.detach().clone() for w in self.weights()]  # a regrown group resumes these values
            generator = torch.Generator().manual_seed(ctx.seed * 1000 + 17)
            masks = self.cut(ctx, [torch.rand(n.numel(), generator=generator) for n in self.norms()])
        if step < end and step % cfg.interval == 0:
            masks = self.exchange(ctx, masks, cosine_rate(cfg.prune_rate, step, end), ctx.train_batch(step))
        if step == end:
            apply_masks(self.weights(), masks)
            masks = self.cut(ctx, relative(self.norms()))
        return None if masks is self.masks else masks

    def norms(self) -> list[Tensor]:
        return [group_norms(w, self.config.axis).detach() for w in self.weights()]

    def cut(self, ctx: TrainContext, scores: Sequence[Tensor]) -> list[Tensor]:
        """Masks removing the lowest-scoring groups to the target (FLOPs of the structure the masks describe, or
        the group count)."""
        cfg: DiSparseConfig = self.config
        device = self.weights()[0].device
        scores = [s.to(device) for s in scores]
        if cfg.flops:
            meter = FlopsMeter(self.model, ctx.train.image_size, ctx.task_names, masks_only=True)
            return search_flops(meter, scores, cfg.flops, cfg.axis).masks
        return masks_for_sparsity(scores, cfg.sparsity, cfg.axis)

    def static_masks(self, ctx: TrainContext) -> list[Tensor]:
        """Connection sensitivities per task, then the union of the tasks' top-k at the target."""
        cfg: DiSparseConfig = self.config
        batches = (ctx.train_batch(i, salt=SCORE_SALT) for i in range(cfg.score_batches))
        per_task = task_scores(self.model, batches, self.task_losses(ctx), cfg.axis, group_saliency)
        return self.cut(ctx, disentangled_scores(per_task))

    def task_losses(self, ctx: TrainContext) -> Callable[[nn.Module, Batch], Mapping[str, Tensor]]:
        return lambda network, batch: ctx.losses(network, batch, ctx.task_names)

    def exchange(self, ctx: TrainContext, masks: list[Tensor], rate: float, batch: Batch) -> list[Tensor]:
        """One dynamic update: drop ``rate`` of each layer's active groups (smallest norm first, a layer keeps one),
        then regrow the union of what each task would regrow, by its gradient (taken with the dropped and inactive
        groups at zero), to get back to the target; a regrown group resumes its dormant values."""
        cfg: DiSparseConfig = self.config
        assert self.dormant is not None
        weights = self.weights()
        with torch.no_grad():
            for weight, mask, dormant in zip(weights, masks, self.dormant):
                dormant.copy_(torch.where(mask, weight, dormant))  # what every active group holds now
        active = []
        for norms, mask in zip(self.norms(), masks):
            keep = mask.reshape(-1).clone()
            alive = keep.nonzero().flatten()
            drop = min(round(rate * alive.numel()), alive.numel() - 1)
            if drop > 0:
                keep[alive[torch.argsort(norms.reshape(-1)[alive], stable=True)[:drop]]] = False
            active.append(keep)
        apply_masks(self.weights(), [a.view(m.shape) for a, m in zip(active, masks)])  # dropped groups are zero
        per_task = task_scores(self.model, [batch], self.task_losses(ctx), cfg.axis, group_gradient)
        kept_norms = relative(self.norms())
        grown = [torch.zeros_like(a) for a in active]
        for scores in per_task.values():
            # a task's choice: every active group ranks above every inactive one (among themselves by norm, should
            # the active ones alone exceed the target), the inactive ones by this task's gradient
            gradients = relative(scores)
            top = max(float(g.max()) for g in gradients) + 1.0
            ranked = [torch.where(a, top + n.reshape(-1), g) for a, n, g in zip(active, kept_norms, gradients)]
            for index, mask in enumerate(self.cut(ctx, ranked)):
                grown[index] |= mask.reshape(-1)
        new = [(a | g).view(m.shape) for a, g, m in zip(active, grown, masks)]
        with torch.no_grad():
            for weight, mask, kept, dormant in zip(weights, new, active, self.dormant):
                weight.copy_(torch.where(mask & ~kept.view(mask.shape), dormant, weight))
        return new


METHOD = MethodInfo(
    name="disparse",
    family="sparse",
    summary="disentangled multi-task pruning: a shared group goes only when no task needs it (static or dynamic)",
    method=DiSparse,
    config=DiSparseConfig,
    paper="Sun, Hassani, Wang, Huang & Shi, DiSparse: Disentangled Sparsification for Multitask Model Compression "
    "(CVPR 2022)",
    link="https://arxiv.org/abs/2206.04662",
    deviations="structured: prunes the shared convs' channel groups (input channels; axis=out for output filters), "
    "scored per group as the sum of the per-weight scores, so that the compact export removes what is pruned — the "
    "paper prunes single weights, of the heads and linear layers too; the heads are not pruned; the target is a "
    "fraction of the compact network's dense FLOPs (flops) or of the groups (sparsity), not a fraction of the "
    "parameters, and a layer always keeps one group; static: the per-task budget k is searched to meet the target "
    "(the authors tuned it by hand per sparsity level) and ties between k and k + 1 are broken by the groups' share "
    "of a task's total score; the sensitivities are taken on the network's own initialisation (the authors' code "
    "re-draws a Xavier-normal copy to score) with one forward and one backward per task per batch; prune_at > 0 "
    "prunes a partly trained network with the same scores (the paper's pretrained setting uses magnitudes); dynamic: "
    "the random start is uniform over groups (the paper: ERK layer densities over weights), groups are dropped "
    "by l2 norm per layer (the paper: l1 per weight), each task regrows by its gradient relative to the layer's mean "
    "until the target is met again, ranked over all layers (the paper: per layer, as many as were dropped), on the "
    "step's batch (the paper splits it in two); a regrown group resumes the values it had when dropped (its initial "
    "values if never active), as the authors' code does (RigL starts it at zero, and at zero an output filter behind "
    "BatchNorm and ReLU gets no gradient); the end cut ranks by norm "
    "relative to the layer's mean over all layers (the paper: back to each layer's density); training: equal "
    "task weights and the budget's Adam (the paper: weighted losses, Adam with weight decay 5e-4 and a step "
    "decay), within the same step budget as every method; the scoring passes (static: score_batches × one forward "
    "and one backward per task, once; dynamic: one such pass per update) are left out of the run's sampled training "
    "FLOPs",
)
