"""Episodic meta-learning of the shared network and of the sparsity strength λ (meta-sparsity).

Our formulation (the paper's algorithm box was not available; see DESIGN §2). One meta-iteration:

1. draw an episode: a non-empty subset C of the seen tasks, a support batch S and a disjoint query
   batch Q from the training split;
2. inner loop on a learn2learn ``MAML.clone()`` (K steps, inner lr α):
   θ′ = θ − α ∇θ [ L_S(θ; C) + Σ_l λ_l Ω_l(θ_shared) ],   λ = exp(ρ) (one global ρ, or one per layer);
3. outer loss L_Q(θ′; C), **without** a penalty term (with one, λ could only shrink);
4. backpropagate to θ (backbone and heads) and to ρ; Adam steps (separate learning rate for ρ);
5. proximal step (block soft-thresholding) on the shared conv groups of θ with threshold η·λ_l.

λ gets its meta-gradient through θ′: ∂L_Q/∂λ_l = −α ⟨∇L_Q(θ′), ∇Ω_l(θ)⟩ for one inner step, so λ grows
when shrinking the groups helps the query loss.

Second order (``first_order=False``): the inner gradient is taken with ``create_graph=True`` through
learn2learn's ``adapt``; λ's path is part of that graph. First order (default on CPU): the task-loss
gradient is detached (first-order MAML) but the penalty term keeps λ in the graph, the update being
θ′ = θ − α (ĝ_S + λ ∇Ω(θ)^) with ^ = detached, applied with learn2learn's ``maml_update``. For K = 1
this gives λ's gradient exactly (∂θ′/∂λ = −α∇Ω(θ) does not depend on second derivatives); θ's own
gradient is first-order MAML.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mtbench.episodes import Episode
from mtbench.sparsity import group_lasso, group_lasso_grad, prox_group_lasso_, shared_conv_weights
from mtbench.training import Batch, Method, TrainContext


def import_learn2learn() -> Any:
    """``import learn2learn`` without the deprecation banner its gym dependency prints."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        import learn2learn
    return learn2learn


@dataclass
class MetaConfig:
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
        axis: group axis, ``in`` (input channels, the authors') or ``out``.
    """

    inner_steps: int = 1
    inner_lr: float = 0.05
    first_order: bool = True
    learn_lambda: bool = True
    lam_init: float = 1e-3
    rho_lr: float = 0.05
    per_layer: bool = False
    combinations: Literal["subsets", "all", "single"] = "subsets"
    axis: Literal["in", "out"] = "in"


class EpisodicMetaLearner(Method):
    """MAML-style meta-training over episodes of task combinations, with a learned (or fixed) λ."""

    kind = "meta"

    def __init__(self, config: MetaConfig) -> None:
        super().__init__(config)
        self.rho: Tensor | None = None

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
        groups = [{"params": list(self.model.parameters()), "lr": ctx.budget.lr}]
        if self.rho is not None and cfg.learn_lambda:
            groups.append({"params": [self.rho], "lr": cfg.rho_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.sampler = ctx.episodes(cfg.combinations)

    # --- λ -------------------------------------------------------------------------------------------
    def lambdas(self) -> Tensor | None:
        """λ = exp(ρ) per penalised layer (a length-1 tensor when global), in the autograd graph."""
        if self.rho is None:
            return None
        lam = self.rho.exp()
        return lam.expand(len(self.shared_positions)) if lam.numel() == 1 else lam

    def lam(self) -> float | list[float] | None:
        if self.rho is None:
            return 0.0
        values = self.rho.detach().exp().cpu().tolist()
        return values[0] if len(values) == 1 else values

    # --- one meta-iteration --------------------------------------------------------------------------
    def adapt(self, ctx: TrainContext, support: Batch, tasks: tuple[str, ...], lam: Tensor | None) -> Any:
        """The inner loop: a learn2learn clone adapted K steps on the support batch (+ λΩ)."""
        cfg: MetaConfig = self.config
        l2l = import_learn2learn()
        learner = self.maml.clone()
        for _ in range(cfg.inner_steps):
            support_loss = sum(ctx.losses(learner, support, tasks).values())
            params = list(learner.parameters())
            shared = [params[i] for i in self.shared_positions]
            if not cfg.first_order:
                objective = support_loss
                if lam is not None:
                    objective = objective + sum(lam[l] * group_lasso([w], cfg.axis) for l, w in enumerate(shared))
                learner.adapt(objective)
                continue
            grads = list(torch.autograd.grad(support_loss, params, allow_unused=True))
            if lam is not None:
                penalty_grads = group_lasso_grad([w.detach() for w in shared], cfg.axis)
                for l, (position, g_omega) in enumerate(zip(self.shared_positions, penalty_grads)):
                    task_grad = grads[position] if grads[position] is not None else torch.zeros_like(g_omega)
                    grads[position] = task_grad + lam[l] * g_omega
            l2l.algorithms.maml.maml_update(learner, cfg.inner_lr, grads)
        return learner

    def query_loss(self, ctx: TrainContext, episode: Episode, support: Batch, query: Batch) -> Tensor:
        """L_Q(θ′(θ, λ); C): the outer objective of one episode (no penalty term)."""
        learner = self.adapt(ctx, support, episode.tasks, self.lambdas() if self.penalised else None)
        return sum(ctx.losses(learner, query, episode.tasks).values())

    def step(self, ctx: TrainContext, step: int) -> dict[str, float]:
        episode = self.sampler.episode(step)
        support, query = ctx.episode_batches(episode)
        self.model.train()
        loss = self.query_loss(ctx, episode, support, query)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.penalised:
            lam = self.lambdas().detach()
            weights = [w for _, w in shared_conv_weights(self.model)]
            prox_group_lasso_(weights, [ctx.budget.lr * lam[l] for l in range(len(weights))], self.config.axis)
        return {"loss": float(loss.detach()), "tasks": len(episode.tasks)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.rho is not None:
            state["rho"] = self.rho.detach().cpu()
        return state
