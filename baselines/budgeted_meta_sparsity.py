"""Budgeted meta-sparsity: the user fixes the inference cost, meta-learning decides where the sparsity goes.

mtbench's own method, built on meta-sparsity (`mtbench.meta`, Upadhyay et al.). Meta-sparsity meta-learns how
sparse the network is overall (λ), a question its one-step meta-gradient answers badly (it pushes λ down by
construction, see the README). Here the overall strength is not learned: the user fixes the cost (``flops``, a
fraction of the compact network's dense FLOPs, as the result's accounting counts them), a dual variable holds the
budget, and what the episodes' meta-gradient learns is the *allocation* of the sparsity over the shared layers.

* **Parameterisation.** One λ per shared conv layer (`MetaConfig.per_layer`),
  ``λ_l = exp(ρ_l + ν)``: ρ (meta-learned) is the allocation, ν (a log-scale Lagrange multiplier, not
  meta-learned) the overall strength. ρ starts at ``log(lam_init)`` in every layer (1e-4: dense at the start, as
  the budget is) and ν at 0.
* **The allocation (where).** Each meta-iteration is meta-sparsity's (episode, inner loop with Σ_l λ_l Ω_l,
  query loss L_Q without penalty, proximal Adam with the prox at η·λ_l). The hypergradient g = ∂L_Q/∂ρ is
  projected onto the zero-sum subspace, ``g ← g − mean(g)·1`` (the orthogonal projection onto {Σ_l δρ_l = 0}),
  Adam steps ρ on it, and the step itself is projected, ``ρ ← ρ − mean(ρ) + mean(ρ_before)`` (Adam's
  per-coordinate scaling would otherwise leak into the mean). So Σ_l ρ_l is constant, the geometric mean of λ is
  ``lam_init·exp(ν)``, and the meta-gradient can only move sparsity from one layer to another.
* **The budget (how much).** Every ``check_every`` steps the compact FLOPs fraction c of the network as it is
  (its exactly-zero groups removed; `mtbench.cost.FlopsMeter`, measured, not a surrogate, outside the training
  FLOP counter) is compared with the scheduled budget ``B_t = 1 − (1 − flops)·(1 − (1 − t/(ramp·T))³)`` (1 at the
  start, ``flops`` from ``ramp`` of the budget on) and ν takes one step of dual ascent on the constraint c ≤ B_t,
  ``ν ← clip(ν + dual_lr·(c − B_t), ±nu_max)`` (`dual_step`): it rises while the network is above the budget and
  falls while below. The dual ascent is on the equality c = B_t (ν may go negative, giving groups back):
  matched cost means at the budget, not anywhere under it.
* **The projection.** At ``end`` of the budget the network is cut onto the budget exactly: every group is ranked
  by the statistic the prox itself tests at the step before, ``r_g = ‖D_g ⊙ v_g‖ / (η·λ_l·√n_g)`` (v: the
  iterate after Adam's step and before the prox, D: Adam's denominator, 1 for ``prox=plain``; the prox zeroes a
  group iff r_g ≤ 1), and `mtbench.cost.search_flops` removes the lowest-ranked groups until the compact FLOPs
  are nearest ``flops`` (a layer keeps its last group). Cutting at r = t is the prox's zeroing with every λ_l
  multiplied by t: t is recorded as ``lambda_multiplier``. The rest of the budget continues the episodic loop
  without λ (no penalty, no prox) with the mask fixed (gradients and weights of removed groups zeroed), so kept
  groups the prox had zeroed grow back.

Recorded per logged step: λ per layer (``lambda``), its raw meta-gradient ∂L_Q/∂λ (mean over layers) and the
share of positive ones, as meta-sparsity; ``nu``, the last measured ``flops_fraction``, the scheduled
``flops_target``; after the projection ``lambda_multiplier``. ``per_layer=false`` or ``learn_lambda=false`` is the
ablation where nothing is meta-learned (one λ = lam_init·exp(ν), set by the dual alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mtbench_baselines.meta_sparsity import MetaSparsityConfig
from torch import Tensor

from mtbench.cost import FlopsMeter, cut_bounds, search_flops, uncounted
from mtbench.meta import EpisodicMetaLearner
from mtbench.methods import MethodInfo
from mtbench.options import bounded
from mtbench.sparsity import group_norms, group_size, shared_conv_weights, zero_group_masks
from mtbench.training import TrainContext, apply_masks


@dataclass
class BudgetedMetaSparsityConfig(MetaSparsityConfig):
    """`MetaSparsityConfig` with one λ per layer and a FLOPs budget held by a dual variable.

    Attributes:
        flops: the budget, a fraction of the dense FLOPs of the compact network (`mtbench.cost`).
        ramp: fraction of the step budget over which the scheduled budget falls (cubically) from 1 to ``flops``.
        end: fraction of the step budget trained with the learned λ; there the network is cut onto the budget and
            the rest fine-tunes with the mask.
        check_every: steps between two measurements of the compact FLOPs (each compacts a CPU copy) and dual steps.
        dual_lr: the dual ascent's step on ν per unit of FLOPs fraction above the budget.
        nu_max: ν is kept in [−nu_max, nu_max] (λ within a factor e^nu_max of the allocation).
        lam_init: λ of every layer at the start, 1e-4: the budget starts at 1 (dense), so the network does too
            (meta-sparsity's 1e-2 zeroes groups in its first prox steps, a dead layer among them). Known problem,
            not solved by this start: the dual step overshoots. In a quick celebamask-synth run at flops = 0.5
            (seed 0) the network stayed dense until step ~120 while ν rose to 5.6, then λ zeroed a layer on the
            main path and the compact FLOPs fell to 0.1 % (everything downstream folds to constants); ν fell to
            −7.7 by step 300 (λ ≈ 5e-8) and the cut at ``end`` restored the budget (0.502). A damped or one-sided
            controller is open.
    """

    per_layer: bool = True
    lam_init: float = bounded(1e-4, above=0)
    flops: float = bounded(0.5, above=0, at_most=1)
    ramp: float = bounded(0.5, above=0, at_most=1)
    end: float = bounded(0.75, above=0, at_most=1)
    check_every: int = bounded(5, at_least=1)
    dual_lr: float = bounded(1.0, above=0)
    nu_max: float = bounded(10.0, above=0)


def dual_step(nu: float, cost: float, target: float, lr: float, bound: float = math.inf) -> float:
    """One step of dual ascent on the log-scale multiplier: ν + lr·(cost − target), clipped to ±bound."""
    return max(-bound, min(bound, nu + lr * (cost - target)))


def project_zero_sum(grad: Tensor) -> Tensor:
    """The orthogonal projection of a per-layer gradient onto {δ : Σ_l δ_l = 0}: ``grad − mean(grad)``."""
    return grad - grad.mean()


def cut_multiplier(scores: Sequence[Tensor], masks: Sequence[Tensor]) -> float:
    """The cut t between the removed groups' scores and the kept ones above them (midpoint; the removed maximum
    when nothing kept lies above it, 0 when nothing is removed)."""
    low, high = cut_bounds(scores, masks)
    if low is None:
        return 0.0
    return low if math.isinf(high) else 0.5 * (low + high)


class BudgetedMetaSparsity(EpisodicMetaLearner):
    """Meta-sparsity's episodic loop with λ_l = exp(ρ_l + ν): ρ meta-learned on the zero-sum subspace, ν the dual
    variable of a FLOPs budget, cut onto the budget at ``end`` (see the module)."""

    rebuilt_by_setup = EpisodicMetaLearner.rebuilt_by_setup | {"meter"}

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.nu = 0.0
        self.fraction = 1.0  # the compact FLOPs fraction last measured
        self.target = 1.0  # the scheduled budget it was compared with
        self.scores: list[Tensor] | None = None  # the prox's statistic at the step before the projection
        self.masks: list[Tensor] | None = None
        self.multiplier = 1.0
        self.meter = FlopsMeter(self.model, ctx.train.image_size, ctx.task_names, masks_only=True)

    # --- λ ---------------------------------------------------------------------------------------------------
    def lambdas(self) -> Tensor | None:
        """λ_l = exp(ρ_l + ν) in the autograd graph (through ρ); None once the mask is fixed (no penalty, no prox)."""
        if self.rho is None or self.masks is not None:
            return None
        lam = (self.rho + self.nu).exp()
        return lam.expand(len(self.shared_positions)) if lam.numel() == 1 else lam

    def lam(self) -> float | list[float] | None:
        """λ per layer as numbers (after the projection: the allocation it was cut with)."""
        assert self.rho is not None
        values = (self.rho.detach() + self.nu).exp().cpu().tolist()
        return values[0] if len(values) == 1 else values

    # --- schedule, budget, projection -------------------------------------------------------------------------
    def total_steps(self, ctx: TrainContext) -> int:
        """The run's meta-iterations (never measured here: `matched_steps` probes `step` on a copy)."""
        return self.matched[0] if self.matched is not None else ctx.budget.steps

    def end_step(self, ctx: TrainContext) -> int:
        """The step at which the network is cut onto the budget (before its forward)."""
        total = self.total_steps(ctx)
        return max(0, min(round(self.config.end * total), total - 1))

    def scheduled(self, ctx: TrainContext, step: int) -> float:
        """B_t: 1 − (1 − flops)·(1 − (1 − step/(ramp·T))³), then ``flops``."""
        length = max(1, round(self.config.ramp * self.total_steps(ctx)))
        due = 1.0 - (1.0 - min(1.0, step / length)) ** 3
        return 1.0 - (1.0 - self.config.flops) * due

    def shared(self) -> list[Tensor]:
        return [w for _, w in shared_conv_weights(self.model)]

    def hold_budget(self, ctx: TrainContext, step: int) -> None:
        """Measure the compact FLOPs of the zero groups and take one dual step on ν."""
        cfg: BudgetedMetaSparsityConfig = self.config
        self.fraction = self.meter.fraction(zero_group_masks(self.shared(), cfg.axis))
        self.target = self.scheduled(ctx, step)
        self.nu = dual_step(self.nu, self.fraction, self.target, cfg.dual_lr, cfg.nu_max)

    def prox_statistics(self) -> list[Tensor]:
        """r_g = ‖D_g ⊙ v_g‖ / (η·λ_l·√n_g) of the current (pre-prox) iterate v: the prox zeroes a group iff r_g ≤ 1."""
        cfg: BudgetedMetaSparsityConfig = self.config
        group = next(g for g in self.optimizer.param_groups if g.get("group_lasso"))
        lam = self.lambdas()
        assert lam is not None
        scores = []
        for layer, weight in enumerate(group["params"]):
            value = weight.detach()
            if cfg.prox == "adam" and "exp_avg_sq" in self.optimizer.state.get(weight, {}):
                value = value * self.optimizer.denominator(weight, group)
            threshold = group["lr"] * lam[layer].detach() * group_size(weight, cfg.axis) ** 0.5
            scores.append(group_norms(value, cfg.axis) / threshold)
        return scores

    def project(self, ctx: TrainContext) -> None:
        """Cut the learned ranking at the budget, zero the removed groups, fix the mask."""
        cfg: BudgetedMetaSparsityConfig = self.config
        scores = self.scores
        if scores is None:  # cut at step 0: no prox step yet, the weights' norms per layer threshold instead
            lam = self.lambdas()
            assert lam is not None
            scores = [
                group_norms(w.detach(), cfg.axis) / (lam[l].detach() * group_size(w, cfg.axis) ** 0.5)
                for l, w in enumerate(self.shared())
            ]
        found = search_flops(self.meter, scores, cfg.flops, cfg.axis)
        self.multiplier = cut_multiplier(scores, found.masks)
        self.masks = found.masks
        self.fraction = found.fraction
        self.target = cfg.flops
        apply_masks(self.shared(), self.masks)

    # --- one meta-iteration ------------------------------------------------------------------------------------
    def step(self, ctx: TrainContext, step: int) -> dict[str, Any]:
        cfg: BudgetedMetaSparsityConfig = self.config
        end = self.end_step(ctx)
        if self.masks is None and step >= end:
            with uncounted():  # bookkeeping, not training compute
                self.project(ctx)
        elif self.masks is None and step % cfg.check_every == 0:
            with uncounted():
                self.hold_budget(ctx, step)
        episode = self.sampler.episode(step)
        support, query = ctx.episode_batches(episode)
        self.model.train()
        loss = self.query_loss(ctx, episode, support, query)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        logged: dict[str, Any] = {"loss": loss.detach(), "tasks": len(episode.tasks)}
        learning = self.masks is None and self.rho is not None and self.rho.requires_grad
        if learning and self.sensitivity is not None:
            self._online_hypergradient()
        if learning and self.rho.grad is not None:
            self.record_lambda_grad((self.rho.grad / self.lambdas().detach()).mean(), logged)  # ∂L_Q/∂λ
            self.rho.grad = project_zero_sum(self.rho.grad)
        if self.masks is not None:
            for weight, mask in zip(self.shared(), self.masks):
                if weight.grad is not None:
                    weight.grad.mul_(mask)
        mean = self.rho.detach().mean() if self.rho is not None else None
        self.optimizer.step(prox=False)
        if mean is not None:
            with torch.no_grad():
                self.rho.add_(mean - self.rho.mean())  # the step projected onto Σ_l δρ_l = 0
        if self.masks is None:
            before = [w.detach().clone() for w in self.shared()] if self.sensitivity is not None else None
            if step == end - 1:
                self.scores = self.prox_statistics()
            self.optimizer.apply_prox()
            if before is not None:
                self._update_sensitivity(before)
        else:
            apply_masks(self.shared(), self.masks)
        logged.update({"nu": self.nu, "flops_fraction": self.fraction, "flops_target": self.target})
        if self.masks is not None:
            logged["lambda_multiplier"] = self.multiplier
        return logged

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "nu": torch.tensor(self.nu)}


METHOD = MethodInfo(
    name="budgeted-meta-sparsity",
    family="sparse",
    summary="meta-sparsity at a fixed FLOPs budget: a dual variable holds the cost, the episodes' meta-gradient "
    "learns the per-layer allocation of λ",
    method=BudgetedMetaSparsity,
    config=BudgetedMetaSparsityConfig,
    paper="mtbench's own method, built on meta-sparsity: Upadhyay et al., Meta-Sparsity: learning optimal sparse "
    "structures in multi-task networks through meta-learning (2025), and their Less is More fixed-λ group lasso",
    link="https://arxiv.org/abs/2501.12115",
    deviations="not in the paper: meta-sparsity (see its deviations) with one λ per shared conv, λ_l = exp(ρ_l + ν); "
    "the overall strength ν is a log-scale Lagrange multiplier updated by dual ascent (ν += dual_lr·(c − B_t), "
    "clipped to ±nu_max) every check_every steps on the measured compact FLOPs fraction c of the network's zero "
    "groups (not a differentiable surrogate), against a budget B_t that falls cubically from 1 to flops over ramp "
    "of the budget; the meta-gradient of the episodes' query loss moves only the allocation ρ, projected onto the "
    "zero-sum subspace (gradient and Adam's step), so Σ_l ρ_l stays at its start; at end of the budget the groups "
    "are ranked by the prox's own statistic ‖D_g⊙v_g‖/(η·λ_l·√n_g) at the step before and cut where the compact "
    "FLOPs are nearest flops (mtbench.cost.search_flops; a layer keeps its last group; the cut, as a multiple of "
    "every λ_l, is recorded as lambda_multiplier), then the episodic loop goes on without λ (no penalty, no prox) "
    "with the mask fixed; the FLOPs measurements and the cut are left out of the run's sampled training FLOPs; "
    "dual_lr, ramp, nu_max and lam_init (1e-4, so that the network starts dense as the budget does) are set by "
    "reasoning, not tuned on any score",
)
