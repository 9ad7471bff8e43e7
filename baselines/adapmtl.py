"""AdapMTL (Xiang, Tang, Yang, Guan & Liu, ACM MM 2024): learnable soft thresholds, on the shared conv channel groups.

The paper trains a multi-task network from scratch with STR's reparameterisation (Kusupati et al. 2020): every
pruned weight is used as ``sign(W)·ReLU(|W| − g(s))`` with a learnable ``s`` and ``g`` the sigmoid, one threshold
per *component* (the shared backbone and each task head), learned with the weights by backpropagation; the task
losses are weighted adaptively; the thresholds stop learning once the network is as sparse as the target.

Here, structured (so that `mtbench.export.compact` removes what is zeroed and the compact FLOPs are real):

* **Reparameterisation.** The training forward uses, for every shared conv's channel group ``W_g`` (the groups
  of `mtbench.sparsity`, ``axis`` ``in`` by default), the block soft-threshold
  ``W_g · ReLU(‖W_g‖ − τ·u_l·√n_g) / ‖W_g‖`` with ``τ = threshold_max · sigmoid(s)``: a group whose per-element
  norm ``‖W_g‖/√n_g`` is at most ``τ·u_l`` is exactly zero. ``u_l`` is the unit the threshold is measured in:
  the RMS of the layer's weights (``scale="layer"``, default) or 1 (``scale="none"``: the raw formula). The
  gradient reaches ``s`` and the weights through this function (tested against finite differences).
* **Components.** One threshold for the shared backbone. The heads are not thresholded: the compact export keeps
  every channel of a head (it removes backbone channels only), so a zero in a head saves none of the FLOPs the
  result counts, and the meta-test's fine-tuning keeps only the backbone's zero groups (a head's zeros would come
  back); heads are trained dense, as in every other sparse method here.
* **Adaptive weighting** (the authors' released rule): from ``adaptive_begin`` of the budget on, task t's weight
  is the mean, over the last ``window`` steps, of its loss's relative change ``|L_t(i−1) − L_t(i)| / L_t(i)``,
  normalised to sum to the number of tasks (1 each until the window is full). The weighted sum ``Σ_t w_t L_t``
  trains the weights and the threshold; a task whose loss moves more under pruning weighs more.
* **Target, the paper's way, then exactly.** ``s`` starts at ``s_init`` and learns by Adam (learning rate
  ``threshold_lr``) on the loss's gradient minus a constant ``pressure`` (the upward force; the authors' is weight
  decay on ``s``). The authors' released code drops the threshold's gradient while the network is at its target
  sparsity; here the same rule is applied against a cubic schedule, ``target · (1 − (1 − t/(ramp·T))³)``
  (checked every ``check_every`` steps), so that the groups die over the first ``ramp`` of the budget instead of
  all at once. At ``end`` of the budget the network is projected onto the target: the ranking the threshold
  defines (``‖W_g‖/(u_l·√n_g)``, one order for the whole backbone) is cut where the compact FLOPs (``flops``,
  `mtbench.cost.search_flops`) or the group count (``sparsity``) meet the target — the same as multiplying the
  learned threshold by the one factor that meets it (recorded as ``threshold_multiplier``; 1 where the learned
  threshold already does); a layer keeps its last group, as everywhere in `mtbench.cost`. Groups the threshold
  kept keep their values, groups it had zeroed and the target keeps come back soft-thresholded at the projected
  cut, and the rest of the budget fine-tunes the network with that mask.

The network the engine, the protocol and the export see (``self.model``) always holds the *effective* weights:
its shared conv kernels are overwritten after every step with the thresholded (then masked) ones, so the
logged group sparsity, the joint score, the meta-test (which keeps the zero groups as its mask) and the compact
accounting all see the pruned network. The latent weights ``W`` live beside it (``self.latent``), and the
training forward substitutes the effective ones into the network (`torch.func.functional_call`; BatchNorm's
running statistics are the network's own).

Training compute: the checks against the target and the projection run outside the training FLOP counter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtbench.cost import FlopsMeter, cut_bounds, masks_for_sparsity, search_flops, uncounted
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import (
    Axis,
    group_dims,
    group_norms,
    group_shape,
    group_size,
    shared_conv_weights,
    zero_group_masks,
)
from mtbench.training import TrainContext

Scale = Literal["layer", "none"]


@dataclass
class AdapMTLConfig:
    """Attributes:
    sparsity: fraction of the shared conv channel groups removed. Ignored when ``flops`` is set.
    flops: 0 (default): the target is ``sparsity``. Otherwise the target is this fraction of the dense FLOPs of
        the compact network (`mtbench.cost`, as the result's accounting counts them).
    ramp: fraction of the step budget over which the scheduled target rises (cubically) to the full target.
    end: fraction of the step budget trained with the learned threshold; there the network is projected onto the
        target and the mask is fixed for the rest (fine-tuning).
    s_init: initial threshold parameter s (τ = threshold_max · sigmoid(s); the default is τ ≈ 0.1 layer RMS).
    threshold_max: the threshold's upper end, in units of ``scale``.
    threshold_lr: Adam's learning rate for s; 0 (default): 12 / the budget's steps (0.02 at the quick budget).
    pressure: the constant upward push on s, subtracted from the loss's gradient (the authors: weight decay on s,
        which pulls s towards 0 and would stall at τ = threshold_max / 2). The loss's gradient grows to meet it as
        the threshold reaches the groups: on one quick nyuv2-synth run it held the threshold where it zeroed under
        1 % (pressure 0.1) and 20 % (1) of the groups by ``end``; 3 (default) met a FLOPs target of 0.5 before
        ``end``, a little behind the schedule; 10 zeroed 70 % of the groups within 50 steps.
    check_every: steps between two checks of the scheduled target (a check reads the sparsity on the host; with
        ``flops`` it also compacts a copy of the network on the CPU); the threshold learns only while it is unmet.
    weighting: ``adaptive`` (the authors' loss weighting) or ``equal`` (Σ_t L_t, the ablation).
    adaptive_begin: fraction of the budget before the adaptive weighting starts (the authors: 5,000 of 20,000).
    window: sliding window of the adaptive weighting, as a fraction of the budget (the authors: 500 of 20,000).
    scale: the threshold's unit: ``layer`` (each layer's weight RMS) or ``none`` (raw weights, as the paper). A
        layer's groups have nearly the same per-element norm (n_g is large), so a raw threshold takes whole layers
        in the order of their scale: on the quick network at the default s_init, 8 of the 11 shared convs lost every
        group at the first step and the other 3 next to none (with ``none``, set s_init for raw magnitudes).
    axis: group axis, ``in`` (input channels, the sparsity methods' groups) or ``out``.
    """

    sparsity: float = bounded(0.5, at_least=0, below=1)
    flops: float = bounded(0.0, at_least=0, at_most=1)
    ramp: float = bounded(0.5, above=0, at_most=1)
    end: float = bounded(0.75, above=0, at_most=1)
    s_init: float = bounded(-3.0, at_least=-30, at_most=30)
    threshold_max: float = bounded(2.0, above=0)
    threshold_lr: float = bounded(0.0, at_least=0)
    pressure: float = bounded(3.0, at_least=0)
    check_every: int = bounded(5, at_least=1)
    weighting: Literal["adaptive", "equal"] = "adaptive"
    adaptive_begin: float = bounded(0.25, at_least=0, at_most=1)
    window: float = bounded(0.025, above=0, at_most=1)
    scale: Scale = "layer"
    axis: Literal["in", "out"] = "in"


# --- the reparameterisation --------------------------------------------------------------------------------------


def threshold_unit(weight: Tensor, scale: Scale) -> Tensor | float:
    """``u_l``: the layer's weight RMS (``layer``; differentiable) or 1 (``none``)."""
    return weight.pow(2).mean().sqrt() if scale == "layer" else 1.0


def soft_threshold(weight: Tensor, tau: Tensor | float, axis: Axis = "in", scale: Scale = "layer") -> Tensor:
    """The effective kernel: every group ``W_g · ReLU(‖W_g‖ − τ·u_l·√n_g) / ‖W_g‖`` (exactly 0 at or below).

    Differentiable in ``weight`` and ``tau`` (a group at zero norm has gradient 0, never NaN).
    """
    squared = weight.pow(2).sum(dim=group_dims(axis))
    positive = squared > 0
    norms = torch.where(positive, squared, torch.ones_like(squared)).sqrt()
    cut = tau * threshold_unit(weight, scale) * group_size(weight, axis) ** 0.5
    factor = torch.where(positive, torch.relu(norms - cut) / norms, torch.zeros_like(norms))
    return weight * factor.view(group_shape(axis))


def relative_norms(weight: Tensor, axis: Axis = "in", scale: Scale = "layer") -> Tensor:
    """``‖W_g‖ / (u_l·√n_g)`` of every group: a group is zero under threshold τ iff this is ≤ τ."""
    unit = threshold_unit(weight.detach(), scale)
    return group_norms(weight.detach(), axis) / (unit * group_size(weight, axis) ** 0.5)


def projection_cut(ratios: Sequence[Tensor], masks: Sequence[Tensor], tau: float) -> float:
    """The threshold t (in the units of `relative_norms`) that removes exactly the masked-out groups: at or above
    every removed group's ratio and below every kept one's that exceeds them; ``tau`` itself where it does.

    Kept groups at or below t (a layer's last group, ties) are kept as they are by `project_weights`.
    """
    removed, high = cut_bounds(ratios, masks)
    low = removed or 0.0
    if low <= tau < high:
        return tau
    return low if math.isinf(high) else 0.5 * (low + high)


def project_weights(
    weight: Tensor, mask: Tensor, ratios: Tensor, tau: float, cut: float, axis: Axis = "in"
) -> Tensor:
    """The projected kernel: masked-out groups 0; a kept group above ``tau`` as the learned threshold made it
    (soft-thresholded at ``tau``); a kept group the learned threshold had zeroed, soft-thresholded at ``cut`` (it
    comes back small); a kept group at or below ``cut`` (a layer's last group) unchanged."""
    level = torch.where(ratios > tau, torch.full_like(ratios, tau), torch.full_like(ratios, cut))
    shrink = torch.where(ratios > level, 1.0 - level / ratios.clamp_min(1e-30), torch.ones_like(ratios))
    return weight * (shrink.view(group_shape(axis)) * mask)


# --- the method --------------------------------------------------------------------------------------------------


class AdapMTL(MTLMethod):
    """Adaptively weighted task losses on a network whose shared conv groups are soft-thresholded by one learned
    threshold, projected onto the target at ``end`` and fine-tuned with the mask (see the module)."""

    rebuilt_by_setup = frozenset({"config", "meter"})
    saved_tensors = ("threshold",)

    #: the mask fixed by the projection (None before it)
    masks: list[Tensor] | None = None

    def setup(self, ctx: TrainContext) -> None:
        cfg: AdapMTLConfig = self.config
        self.model = ctx.new_model()
        device = next(self.model.parameters()).device
        #: the latent weights W of the shared convs (the network holds the effective ones)
        self.latent = [nn.Parameter(w.detach().clone()) for w in self.shared()]
        #: s of the backbone's threshold τ = threshold_max · sigmoid(s)
        self.threshold = nn.Parameter(torch.full((), float(cfg.s_init), device=device))
        self.masks = None
        self.frozen = False  # the target is met: the threshold does not learn (the authors' rule)
        self.multiplier = 1.0  # the factor the projection applied to the learned threshold
        tasks = len(ctx.task_names)
        self.previous = torch.zeros(tasks, device=device)  # the task losses of the previous step
        self.changes = torch.zeros(self.window(ctx), tasks, device=device)  # relative changes, a ring
        self.task_weights = torch.ones(tasks, device=device)
        self.meter = (
            FlopsMeter(self.model, ctx.train.image_size, ctx.task_names, masks_only=True) if cfg.flops else None
        )
        self.optimizer = self.make_optimizer(ctx)
        self.write_effective()

    def make_optimizer(self, ctx: TrainContext) -> torch.optim.Optimizer:
        shared = {id(w) for w in self.shared()}
        rest = [p for p in self.model.parameters() if id(p) not in shared]
        lr = self.config.threshold_lr or 12.0 / ctx.budget.steps
        threshold = {"params": [self.threshold], "lr": lr}
        return ctx.make_optimizer([{"params": rest}, {"params": self.latent}, threshold])

    # --- pieces ---

    def shared(self) -> list[nn.Parameter]:
        return [w for _, w in shared_conv_weights(self.model)]

    def shared_names(self) -> list[str]:
        """The shared convs' weights as `functional_call` names them (prefixed by ``backbone.``)."""
        return [f"backbone.{name}.weight" for name, module in self.model.backbone.named_modules() if
                isinstance(module, nn.Conv2d) and module.weight.dim() == 4]  # fmt: skip

    def tau(self) -> Tensor:
        """τ of the backbone, in units of ``scale``."""
        return self.config.threshold_max * torch.sigmoid(self.threshold)

    def end_step(self, ctx: TrainContext) -> int:
        """The step at which the network is projected onto the target (before its forward)."""
        return max(0, min(round(self.config.end * ctx.budget.steps), ctx.budget.steps - 1))

    def window(self, ctx: TrainContext) -> int:
        return max(1, round(self.config.window * ctx.budget.steps))

    def effective(self) -> list[Tensor]:
        """The kernels the network computes with: thresholded latents, or, after the projection, masked ones."""
        cfg: AdapMTLConfig = self.config
        if self.masks is None:
            tau = self.tau()
            return [soft_threshold(w, tau, cfg.axis, cfg.scale) for w in self.latent]
        return [w * m for w, m in zip(self.latent, self.masks)]

    @torch.no_grad()
    def write_effective(self) -> None:
        """Overwrite the network's shared kernels with the effective ones (what is scored and exported)."""
        for weight, value in zip(self.shared(), self.effective()):
            weight.copy_(value)

    def scheduled(self, ctx: TrainContext, step: int) -> float:
        """The share of the target due at ``step``: 1 − (1 − step / (ramp · steps))³, then 1."""
        length = max(1, round(self.config.ramp * ctx.budget.steps))
        return 1.0 - (1.0 - min(1.0, step / length)) ** 3

    def reached(self, ctx: TrainContext, step: int) -> bool:
        """Whether the network (its effective weights) meets the target due at ``step``."""
        cfg: AdapMTLConfig = self.config
        due = self.scheduled(ctx, step)
        masks = zero_group_masks(self.shared(), cfg.axis)
        if cfg.flops:
            assert self.meter is not None
            return self.meter.fraction(masks) <= 1.0 - (1.0 - cfg.flops) * due
        kept = sum(int(m.sum()) for m in masks)
        return 1.0 - kept / sum(m.numel() for m in masks) >= cfg.sparsity * due

    def project(self) -> None:
        """Cut the thresholds' ranking at the target, write the projected weights, fix the mask."""
        cfg: AdapMTLConfig = self.config
        ratios = [relative_norms(w, cfg.axis, cfg.scale) for w in self.latent]
        if cfg.flops:
            assert self.meter is not None
            masks = search_flops(self.meter, ratios, cfg.flops, cfg.axis).masks
        else:
            masks = masks_for_sparsity(ratios, cfg.sparsity, cfg.axis)
        tau = float(self.tau().detach())
        cut = projection_cut(ratios, masks, tau)
        self.multiplier = cut / tau
        with torch.no_grad():
            for weight, mask, ratio in zip(self.latent, masks, ratios):
                weight.copy_(project_weights(weight, mask, ratio, tau, cut, cfg.axis))
        self.masks = masks
        self.frozen = True
        self.write_effective()

    def weigh(self, ctx: TrainContext, step: int, losses: Tensor) -> Tensor:
        """The task weights of this step (the authors' adaptive rule; see the module), from its losses."""
        cfg: AdapMTLConfig = self.config
        begin = round(cfg.adaptive_begin * ctx.budget.steps)
        if cfg.weighting == "equal" or step < begin:
            return torch.ones_like(losses)
        if step > begin:
            change = (self.previous - losses).abs() / losses.clamp_min(1e-12)
            self.changes[(step - begin - 1) % self.changes.shape[0]] = change
        self.previous.copy_(losses)
        if step - begin >= self.changes.shape[0]:
            mean = self.changes.mean(dim=0)
            total = mean.sum()
            normalised = mean * (len(mean) / total.clamp_min(1e-30))
            self.task_weights.copy_(torch.where(total > 0, normalised, torch.ones_like(mean)))
        return self.task_weights.clone()

    # --- the step ---

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor]:
        cfg: AdapMTLConfig = self.config
        if self.masks is None and step >= self.end_step(ctx):
            with uncounted():  # bookkeeping, not training compute
                self.project()
        elif self.masks is None and step % cfg.check_every == 0:
            with uncounted():
                self.frozen = self.reached(ctx, step)
        self.model.train()
        batch = ctx.train_batch(step)
        substituted = dict(zip(self.shared_names(), self.effective()))

        def network(images: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
            return functional_call(self.model, substituted, (images, tasks))

        losses = ctx.losses(network, batch, ctx.task_names)  # type: ignore[arg-type]
        values = torch.stack([loss.detach() for loss in losses.values()])
        weights = self.weigh(ctx, step, values.float())
        self.optimizer.zero_grad(set_to_none=True)
        sum(w * loss for w, loss in zip(weights, losses.values())).backward()
        if self.frozen:
            self.threshold.grad = None  # Adam leaves a parameter without a gradient as it is
        elif cfg.pressure and self.threshold.grad is not None:
            self.threshold.grad.sub_(cfg.pressure)
        self.optimizer.step()
        self.write_effective()
        logged = {
            "loss": values.sum(),
            **{f"loss/{t}": v for t, v in zip(losses, values)},
            **{f"w/{t}": w.detach().clone() for t, w in zip(ctx.task_names, weights)},
            "threshold": self.tau().detach(),
        }
        if self.masks is not None:
            logged["threshold_multiplier"] = self.multiplier
        return logged


METHOD = MethodInfo(
    name="adapmtl",
    family="sparse",
    summary="learned soft thresholds (STR) on the shared channel groups with adaptive task weighting, projected "
    "onto a FLOPs or sparsity target",
    method=AdapMTL,
    config=AdapMTLConfig,
    paper="Xiang, Tang, Yang, Guan & Liu, AdapMTL: Adaptive Pruning Framework for Multitask Learning Model "
    "(ACM Multimedia 2024); the reparameterisation of Kusupati et al., Soft Threshold Weight Reparameterization "
    "for Learnable Sparsity (ICML 2020). Published (NYU-v2, the paper's table): dense 19.94 mIoU, 48.71 pixel "
    "accuracy, 17.85° mean normal error, 0.64 depth abs. error; AdapMTL 20.16 / 49.14 / 17.53 at 52.74 % backbone "
    "sparsity",
    link="https://arxiv.org/abs/2408.03913",
    deviations="structured: block soft-thresholding of the shared convs' channel groups (input channels; axis=out "
    "for output filters) instead of STR's element-wise soft threshold, so that the compact export removes what is "
    "zeroed (element-wise zeros would not lower the compact FLOPs at all; not offered); the threshold is measured in "
    "each layer's weight RMS (scale=layer; scale=none is the paper's raw magnitude, under which the groups of a "
    "layer, of nearly equal per-element norm, die together, whole layers in the order of their scale) and bounded by "
    "threshold_max (τ = threshold_max·sigmoid(s)); one threshold for the backbone, none for the heads (the export "
    "keeps every head channel and the meta-test revives a head's zeros: a head threshold would cost accuracy and "
    "save nothing counted), so the per-component allocation of the paper reduces to the backbone's; the threshold's "
    "upward force is a constant pressure rather than weight decay on s (which stalls at sigmoid(0)), and no weight "
    "decay on the weights (every method here trains with the budget's plain Adam); the target is a fraction of the "
    "compact network's dense FLOPs (flops) or of the groups (sparsity), not of all parameters; the authors' rule "
    "(the threshold stops learning while the target is met) is applied against a cubic schedule towards the target "
    "over ramp of the budget, checked every check_every steps; at end of the budget the network is projected onto "
    "the target exactly (the learned threshold times one multiplier, found by bisection over the compact FLOPs; a "
    "layer keeps its last group) and fine-tuned with that mask for the rest of the same step budget (the paper "
    "trains with the thresholds to the end and meets its target only as closely as they do); the adaptive weights "
    "follow the authors' released code (mean relative loss change over a sliding window, scaled to sum to the "
    "number of tasks; begin and window as fractions of the budget, 0.25 and 0.025 as theirs); the training forward "
    "runs eagerly (torch.func.functional_call), even under --compile; the checks and the projection are left out of "
    "the run's sampled training FLOPs; the default pressure (3) was picked from 0.1, 1, 3 and 10 on one "
    "nyuv2-synth quick run by the mean training loss of its last 50 steps (no validation or test score was read)",
)
