"""Episodic meta-learning of the shared network and of the sparsity strength λ (meta-sparsity).

Our formulation (the paper's algorithm box was not available; see DESIGN §2). One meta-iteration:

1. draw an episode: a non-empty subset C of the seen tasks, a support batch S from the meta-training
   part of the training split and a query batch Q from a meta-validation split carved from it
   (``query_split="meta-val"``, the default, as the authors' NYU ``meta_gt_sets``; ``"train"`` draws
   both, disjoint, from the whole training split); held-out tasks' labels are never read;
2. inner loop on a learn2learn ``MAML.clone()`` (K steps, inner lr α), with λ = exp(ρ) (one global ρ,
   or one per layer) entering in one of two ways (``lam_path``):
   - ``penalty`` (default): θ′ = θ − α ∇θ [ L_S(θ; C) + Σ_l λ_l Ω_l(θ_shared) ];
   - ``prox``: θ′ = prox_{αλ}(θ − α ∇θ L_S(θ; C)), block soft-thresholding of the shared groups inside
     the meta-graph; λ's gradient then flows through the surviving groups' shrinkage
     ∂θ′_g/∂λ = −α√n_g v_g/‖v_g‖ (v = θ − α∇L_S), and a group the inner prox zeroes passes none;
3. outer loss L_Q(θ′; C), **without** a penalty term (with one, λ only ever shrinks);
4. backpropagate to θ (backbone and heads) and to ρ; the meta-optimizer is the authors' proximal Adam
   (`mtbench.sparsity.ProximalAdam`; separate learning rate for ρ), whose step ends with
5. the proximal step on the shared conv groups of θ with threshold η·λ_l·√n_g, in the metric of Adam's
   denominator (``prox="adam"``) or Euclidean (``prox="plain"``).

λ's meta-gradient (``hypergradient="maml"``, default): through θ′. For K = 1 and the penalty path,
∂L_Q/∂λ_l = −α ⟨∇L_Q(θ′), ∇Ω_l(θ)⟩, so λ grows when shrinking the groups helps the query loss. This
horizon is one inner step: it cannot see what sparsity buys later in training.

``hypergradient="online"`` (a longer horizon, our variant): forward-mode sensitivity of the meta-
parameters to λ along the actual training trajectory, first order (Hessian terms dropped, as in
first-order MAML): Z_l ← mask_l ⊙ (γ Z_l + (θ_{t+1} − v_t)/λ_l), where v_t is θ after the Adam step and
before the prox, so (θ_{t+1} − v_t)/λ_l = ∂prox/∂λ_l of the surviving groups (exact for the plain and
the D-metric prox: the prox moves a surviving group by −τ D⁻¹x/‖x‖ with τ ∝ λ) and zeroed groups carry
no sensitivity; γ = 1 − 1/horizon truncates it. The hypergradient is ∂L_Q/∂λ_l ≈ ⟨∇_{θ_l} L_Q, Z_l⟩,
i.e. "would the query loss be lower had the last ~horizon steps shrunk less/more".

Second order (``first_order=False``): the inner gradient is taken with ``create_graph=True``; the group
norm's derivative at a zero group is defined as 0 (`mtbench.sparsity._safe_sqrt`), as in the first-order
path — without that, autograd of √ at 0 turns everything into NaN after the first zeroed group. First
order (default on CPU): the task-loss gradient is detached (first-order MAML) but λ stays in the graph,
θ′ = θ − α (ĝ_S + λ ∇Ω(θ)^) with ^ = detached; for K = 1 this gives λ's gradient exactly.

Every run records ∂L_Q/∂λ per logged step and the fraction of steps where it was positive (λ pushed
down), beside λ's trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtbench.episodes import Episode
from mtbench.options import bounded
from mtbench.sparsity import (
    ProximalAdam,
    ProxOptions,
    group_lasso,
    group_lasso_grad,
    group_norms,
    group_shape,
    group_soft_threshold,
    shared_conv_weights,
    sparse_param_groups,
)
from mtbench.training import Batch, Method, TrainContext, matched_steps, quiet


def import_learn2learn() -> Any:
    """``import learn2learn`` without the deprecation banner its gym dependency prints."""
    with quiet():
        import learn2learn
    return learn2learn


@dataclass
class MetaConfig(ProxOptions):
    """Configuration of the episodic meta-learner.

    Attributes:
        inner_steps: K, inner-loop steps per episode.
        inner_lr: α, inner-loop learning rate.
        first_order: first-order meta-gradients (see module docstring) instead of second order.
        learn_lambda: meta-learn λ = exp(ρ); False keeps λ fixed at ``lam_init``.
        lam_init: λ at the start (0 disables the penalty and the prox step: meta-dense).
        rho_lr: Adam learning rate of ρ.
        per_layer: one λ per shared conv layer instead of one global λ.
        combinations: task combinations per episode: ``subsets`` (2^T − 1, the authors'), ``all``, ``single``.
        query_split: ``meta-val`` (queries from a meta-validation split carved from training) or ``train``.
        meta_val_fraction: size of that meta-validation split, as a fraction of the training split.
        lam_path: how λ enters the inner loop: ``penalty`` (gradient of λΩ) or ``prox`` (inner prox step).
        hypergradient: ``maml`` (through θ′, one episode) or ``online`` (sensitivity along training).
        horizon: the online hypergradient's truncation, in outer steps (γ = 1 − 1/horizon).
        match_ew_flops: run as many meta-iterations as cost the training FLOPs of the budget's ``steps`` equal-
            weighting steps (`mtbench.training.matched_steps`, counted before training) instead of ``steps``
            meta-iterations: the compute-matched comparison.
        axis / prox / bias_correction: see `mtbench.sparsity.ProxOptions`.
    """

    inner_steps: int = bounded(1, at_least=1)
    inner_lr: float = bounded(0.05, above=0)  # 0 makes the meta-gradient of λ zero
    first_order: bool = True
    learn_lambda: bool = True
    lam_init: float = bounded(1e-3, at_least=0)
    rho_lr: float = bounded(0.05, above=0)
    per_layer: bool = False
    combinations: Literal["subsets", "all", "single"] = "subsets"
    query_split: Literal["meta-val", "train"] = "meta-val"
    meta_val_fraction: float = bounded(0.2, above=0, below=1)
    lam_path: Literal["penalty", "prox"] = "penalty"
    hypergradient: Literal["maml", "online"] = "maml"
    horizon: int = bounded(100, at_least=1)
    match_ew_flops: bool = False


class EpisodicMetaLearner(Method):
    """MAML-style meta-training over episodes of task combinations, with a learned (or fixed) λ."""

    kind = "meta"
    rebuilt_by_setup = Method.rebuilt_by_setup | {"sampler"}  # episodes depend only on (seed, index)

    def __init__(self, config: MetaConfig) -> None:
        super().__init__(config)
        self.rho: Tensor | None = None
        self.hyper_steps = 0
        self.hyper_positive = 0
        self.matched: tuple[int, float, float] | None = None  #: (steps, FLOPs per step, ew's) when compute-matched

    def train_steps(self, ctx: TrainContext) -> int:
        """The budget's ``steps``, or with ``match_ew_flops`` the meta-iterations that cost ew's training FLOPs."""
        if not self.config.match_ew_flops:
            return ctx.budget.steps
        if self.matched is None:
            self.matched = matched_steps(self, ctx)
        return self.matched[0]

    # --- set-up --------------------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        l2l = import_learn2learn()
        cfg: MetaConfig = self.config
        self.model = ctx.new_model()
        # positions of the shared conv kernels in parameters(), in shared_conv_weights() order (λ_l ↔ layer l)
        param_names = [name for name, _ in self.model.named_parameters()]
        self.shared_positions = [
            param_names.index(f"backbone.{name}.weight") for name, _ in shared_conv_weights(self.model)
        ]
        layers = len(self.shared_positions) if cfg.per_layer else 1
        self.penalised = cfg.lam_init > 0
        if self.penalised:
            self.rho = torch.full(
                (layers,),
                math.log(cfg.lam_init),
                device=ctx.device,
                dtype=torch.float32,
                requires_grad=cfg.learn_lambda,
            )
        self.maml = l2l.algorithms.MAML(self.model, lr=cfg.inner_lr, first_order=cfg.first_order, allow_unused=True)
        groups = (
            sparse_param_groups(self.model, ctx.budget.lr, self._current_lambdas, cfg.axis)
            if self.penalised
            else [{"params": list(self.model.parameters()), "lr": ctx.budget.lr}]
        )
        if self.rho is not None and cfg.learn_lambda:
            groups.append({"params": [self.rho], "lr": cfg.rho_lr})
        self.optimizer = ctx.make_optimizer(
            groups, optimizer_class=ProximalAdam, prox=cfg.prox, bias_correction=cfg.bias_correction
        )
        fraction = cfg.meta_val_fraction if cfg.query_split == "meta-val" else None
        self.sampler = ctx.episodes(cfg.combinations, meta_val_fraction=fraction)
        self.sensitivity = (
            [torch.zeros_like(w) for _, w in shared_conv_weights(self.model)]
            if cfg.hypergradient == "online" and self.penalised
            else None
        )

    # --- λ -------------------------------------------------------------------------------------------
    def lambdas(self) -> Tensor | None:
        """λ = exp(ρ) per penalised layer (a length-1 tensor when global), in the autograd graph."""
        if self.rho is None:
            return None
        lam = self.rho.exp()
        return lam.expand(len(self.shared_positions)) if lam.numel() == 1 else lam

    def _current_lambdas(self) -> list[Tensor]:
        """λ_l per penalised layer for the optimiser's prox: 0-dim tensors left on their device (no host read;
        `ProximalAdam` forms the thresholds there)."""
        lam = self.lambdas()
        return [] if lam is None else list(lam.detach().unbind())

    def lam(self) -> float | list[float] | None:
        """λ as numbers (a host read): `train` calls it at the steps it records, never inside a step."""
        if self.rho is None:
            return 0.0
        values = self.rho.detach().exp().cpu().tolist()
        return values[0] if len(values) == 1 else values

    # --- one meta-iteration --------------------------------------------------------------------------
    def adapt(self, ctx: TrainContext, support: Batch, tasks: tuple[str, ...], lam: Tensor | None) -> Any:
        """The inner loop: a learn2learn clone adapted K steps on the support batch, λ entering by ``lam_path``."""
        cfg: MetaConfig = self.config
        l2l = import_learn2learn()
        learner = self.maml.clone()
        penalty = lam is not None and cfg.lam_path == "penalty"
        for _ in range(cfg.inner_steps):
            params = list(learner.parameters())
            shared = [params[i] for i in self.shared_positions]
            objective = sum(ctx.losses(learner, support, tasks).values())
            if penalty and not cfg.first_order:
                objective = objective + sum(lam[l] * group_lasso([w], cfg.axis) for l, w in enumerate(shared))
            grads = [
                g if g is not None else torch.zeros_like(p)
                for g, p in zip(
                    torch.autograd.grad(objective, params, create_graph=not cfg.first_order, allow_unused=True),
                    params,
                )
            ]
            if penalty and cfg.first_order:
                for l, (position, g_omega) in enumerate(
                    zip(self.shared_positions, group_lasso_grad([w.detach() for w in shared], cfg.axis))
                ):
                    grads[position] = grads[position] + lam[l] * g_omega
            updates = [-cfg.inner_lr * g for g in grads]
            if lam is not None and cfg.lam_path == "prox":
                for l, position in enumerate(self.shared_positions):
                    moved = params[position] + updates[position]
                    updates[position] = (
                        group_soft_threshold(moved, cfg.inner_lr * lam[l], cfg.axis) - params[position]
                    )
            l2l.utils.update_module(learner, updates=updates)
        return learner

    def query_loss(self, ctx: TrainContext, episode: Episode, support: Batch, query: Batch) -> Tensor:
        """L_Q(θ′(θ, λ); C): the outer objective of one episode (no penalty term)."""
        learner = self.adapt(ctx, support, episode.tasks, self.lambdas() if self.penalised else None)
        return sum(ctx.losses(learner, query, episode.tasks).values())

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor | int]:
        episode = self.sampler.episode(step)
        support, query = ctx.episode_batches(episode)
        self.model.train()
        loss = self.query_loss(ctx, episode, support, query)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Logged values stay device tensors (no host sync in the step); `train` makes floats of them at the
        # steps it records.
        logged: dict[str, Tensor | int] = {"loss": loss.detach(), "tasks": len(episode.tasks)}
        if self.sensitivity is not None and self.rho is not None and self.rho.requires_grad:
            self._online_hypergradient()
        if self.rho is not None and self.rho.grad is not None:
            # ρ.grad = Σ_l λ_l ∂L/∂λ_l; for a global λ, ∂L_Q/∂λ = ρ.grad / λ (per layer: their mean)
            self.record_lambda_grad((self.rho.grad / self.rho.detach().exp()).mean(), logged)
        if self.sensitivity is None:
            self.optimizer.step()
        else:
            self.optimizer.step(prox=False)
            before = [w.detach().clone() for _, w in shared_conv_weights(self.model)]
            self.optimizer.apply_prox()
            self._update_sensitivity(before)
        return logged

    def record_lambda_grad(self, lam_grad: Tensor, logged: dict[str, Any]) -> None:
        """Log ∂L_Q/∂λ and the running share of steps where it was positive (λ pushed down)."""
        self.hyper_steps += 1
        # the count of positive steps is kept on the device in float64 (exact for any count), so the
        # fraction below is the same correctly rounded double as the former int / int
        positive = lam_grad > 0
        positive = positive.cpu() if positive.device.type == "mps" else positive  # MPS has no float64
        self.hyper_positive = positive.to(torch.float64) + self.hyper_positive
        logged["lambda_grad"] = lam_grad
        logged["lambda_grad_positive"] = self.hyper_positive / self.hyper_steps

    # --- the online (longer-horizon) hypergradient ---------------------------------------------------
    def _online_hypergradient(self) -> None:
        """Replace ρ's gradient by λ_l ⟨∇_{θ_l} L_Q, Z_l⟩ (see the module docstring)."""
        assert self.sensitivity is not None and self.rho is not None
        weights = [w for _, w in shared_conv_weights(self.model)]
        per_layer = torch.stack(
            [
                (w.grad * z).sum() if w.grad is not None else w.new_zeros(())
                for w, z in zip(weights, self.sensitivity)
            ]
        )
        lam = self.lambdas().detach()
        grad = lam * per_layer
        self.rho.grad = grad.sum().view(1) if self.rho.numel() == 1 else grad

    @torch.no_grad()
    def _update_sensitivity(self, before_prox: list[Tensor]) -> None:
        assert self.sensitivity is not None
        cfg: MetaConfig = self.config
        gamma = 1.0 - 1.0 / max(cfg.horizon, 1)
        lam = self.lambdas().detach()
        shape = group_shape(cfg.axis)
        for l, ((_, weight), v, z) in enumerate(zip(shared_conv_weights(self.model), before_prox, self.sensitivity)):
            alive = (group_norms(weight, cfg.axis) > 0).view(shape)
            z.mul_(gamma).add_((weight - v) / lam[l]).mul_(alive)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.rho is not None:
            state["rho"] = self.rho.detach().cpu()
        return state
