"""Implicit-λ: fixed-λ training whose λ is learned by implicit differentiation on a meta-validation split.

Our method, after Bertrand et al. 2020 (implicit differentiation of Lasso-type models on their support) and
Lorraine, Vicol & Duvenaud 2020 (hypergradients by implicit differentiation with Hessian-vector products).
Training is fixed-λ's: equal weighting and `mtbench.sparsity.ProximalAdam` with the current λ = exp(ρ) on the
shared conv groups, with batches from the meta-train part of the training split. Every ``phase_steps`` steps the
weights are taken as an approximate solution θ*(λ) of min F + Σ_l λ_l Ω_l, and `mtbench.implicit.hypergradient`
gives dL_V/dρ on that solution's active set: F on the training batches of the last ``hyper_batches`` steps, L_V
(no penalty) on as many batches of the meta-validation split carved from the training split
(`mtbench.episodes.meta_validation_split`, meta-sparsity's query split; the protocol's validation split is never
read). One Adam step on ρ follows, and the next phase goes on from the current weights (warm start).

Recorded like meta-sparsity: dL_V/dλ (``lambda_grad``; per layer, their mean) and the fraction of hypergradients
so far that were positive (pushing λ down), at every logged step after the first phase, and λ itself; also the
solve's relative residual (``hyper_residual``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtbench.implicit import hypergradient
from mtbench.losses import task_loss
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import ProximalAdam, ProxOptions, shared_conv_weights, sparse_param_groups
from mtbench.training import Batch, TrainContext


@dataclass
class ImplicitLambdaConfig(ProxOptions):
    """Attributes:
    lam_init: λ at the start (fixed-λ's default, so any move of λ is learned, not set).
    rho_lr: Adam learning rate of ρ = log λ (one step per phase).
    phase_steps: training steps between two λ updates.
    per_layer: one λ per shared conv instead of one global λ.
    solver: ``cg`` (conjugate gradient) or ``neumann`` (truncated Neumann series) for H_A⁻¹ ∇L_V.
    solver_iterations: Hessian-vector products per hypergradient (each costs about two backward passes).
    damping: δ: the solve uses H_A + δI (a network's H_A is not positive definite everywhere).
    neumann_lr: η of the Neumann series (it needs η < 2/‖H_A + δI‖).
    tol: stop the solve at this relative residual; 0 runs every iteration and reads nothing on the host.
    hyper_batches: training batches (for F) and meta-validation batches (for L_V) per hypergradient.
    meta_val_fraction: the meta-validation split's share of the training split (as meta-sparsity's).
    axis / prox / bias_correction: see `mtbench.sparsity.ProxOptions`.
    """

    lam_init: float = bounded(1e-2, above=0)
    rho_lr: float = bounded(0.1, above=0)
    phase_steps: int = bounded(100, at_least=1)
    per_layer: bool = False
    solver: Literal["cg", "neumann"] = "cg"
    solver_iterations: int = bounded(20, at_least=1)
    damping: float = bounded(1e-3, at_least=0)
    neumann_lr: float = bounded(1e-2, above=0)
    tol: float = bounded(0.0, at_least=0)
    hyper_batches: int = bounded(1, at_least=1)
    meta_val_fraction: float = bounded(0.2, above=0, below=1)


def eager_losses(ctx: TrainContext, model: nn.Module, batch: Batch, tasks: list[str]) -> dict[str, Tensor]:
    """`TrainContext.losses` without ``torch.compile`` and autocast: Hessian-vector products differentiate the
    gradient again, which a compiled graph does not support (and bfloat16 would blur)."""
    outputs = model(batch["image"], tasks)
    return {t: task_loss(ctx.by_name[t], outputs[t], batch[ctx.by_name[t].target]) for t in tasks}


class ImplicitLambda(MTLMethod):
    """Equal weighting + proximal Adam with λ = exp(ρ); ρ steps by the implicit hypergradient of a
    meta-validation loss every ``phase_steps`` steps (see the module docstring)."""

    rebuilt_by_setup = MTLMethod.rebuilt_by_setup | {"sampler"}  # batches depend only on (seed, step)

    def __init__(self, config: ImplicitLambdaConfig) -> None:
        super().__init__(config)
        self.rho: Tensor | None = None
        self.hypergradients = 0
        self.positive: Tensor | float = 0.0
        self.last: dict[str, Tensor] = {}  #: the latest hypergradient's logged values

    def setup(self, ctx: TrainContext) -> None:
        cfg: ImplicitLambdaConfig = self.config
        self.model = ctx.new_model()
        self.layers = len(shared_conv_weights(self.model))
        self.rho = torch.full(
            (self.layers if cfg.per_layer else 1,), math.log(cfg.lam_init), device=ctx.device, dtype=torch.float32
        ).requires_grad_(True)  # a leaf for its optimiser; its gradient is set by `update_lambda`, not by backward
        self.optimizer = self.make_optimizer(ctx)
        self.rho_optimizer = ctx.make_optimizer([self.rho], lr=cfg.rho_lr)
        # every task in every draw: the support is a training batch (meta-train part), the query a meta-val batch
        self.sampler = ctx.episodes("all", meta_val_fraction=cfg.meta_val_fraction)

    def make_optimizer(self, ctx: TrainContext) -> torch.optim.Optimizer:
        cfg: ImplicitLambdaConfig = self.config
        groups = sparse_param_groups(
            self.model, ctx.budget.lr, self._layer_lambdas, cfg.axis, self.trainable_parameters()
        )
        return ctx.make_optimizer(
            groups, optimizer_class=ProximalAdam, prox=cfg.prox, bias_correction=cfg.bias_correction
        )

    # --- λ -------------------------------------------------------------------------------------------
    def lambdas(self) -> Tensor:
        """λ = exp(ρ), detached: (1,) when global, (L,) per layer."""
        assert self.rho is not None, "setup() was not called"
        return self.rho.detach().exp()

    def _layer_lambdas(self) -> list[Tensor]:
        """λ_l per shared conv for the prox: 0-dim tensors left on their device (no host read)."""
        lam = self.lambdas()
        return list((lam.expand(self.layers) if lam.numel() == 1 else lam).unbind())

    def lam(self) -> float | list[float]:
        """λ as numbers (a host read): `train` calls it at the steps it records, never inside a step."""
        values = self.lambdas().cpu().tolist()
        return values[0] if len(values) == 1 else values

    # --- training ------------------------------------------------------------------------------------
    def _train_request(self, position: int) -> list[tuple[int, ...]]:
        return [self.sampler.episode(position).support]

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor]:
        self.model.train()
        batch = ctx.fetch(self._train_request(step), ctx.task_names, self._train_request, step, "implicit-train")[0]
        losses = ctx.losses(self.model, batch, ctx.task_names)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(ctx, step, losses)
        self.optimizer.step()
        if (step + 1) % self.config.phase_steps == 0:
            self.update_lambda(ctx, step)
        return {
            "loss": sum(l.detach() for l in losses.values()),
            **{f"loss/{t}": l.detach() for t, l in losses.items()},
            **self.last,
        }

    def update_lambda(self, ctx: TrainContext, step: int) -> None:
        """One step of ρ by the implicit hypergradient at the current weights (end of a phase)."""
        cfg: ImplicitLambdaConfig = self.config
        assert self.rho is not None and self.model is not None
        episodes = [self.sampler.episode(step - k) for k in range(min(cfg.hyper_batches, step + 1))]
        requests = [e.support for e in episodes] + [e.query for e in episodes]
        # read on the spot (no read-ahead: one read per phase); a training loss graph kept for double backward
        batches = ctx.fetch(requests, ctx.task_names, None, step, "implicit-hyper")  # type: ignore[arg-type]
        count = len(episodes)
        tasks = ctx.task_names
        # the forwards below run in training mode (batch statistics, as F is trained): keep BatchNorm's running
        # statistics as training left them
        buffers = [b.detach().clone() for b in self.model.buffers()]
        train_loss = sum(sum(eager_losses(ctx, self.model, b, tasks).values()) for b in batches[:count]) / count
        val_loss = sum(sum(eager_losses(ctx, self.model, b, tasks).values()) for b in batches[count:]) / count
        result = hypergradient(
            train_loss,
            val_loss,
            [p for p in self.model.parameters() if p.requires_grad],
            [w for _, w in shared_conv_weights(self.model)],
            self.lambdas(),
            axis=cfg.axis,
            solver=cfg.solver,
            iterations=cfg.solver_iterations,
            tol=cfg.tol or None,
            damping=cfg.damping,
            neumann_lr=cfg.neumann_lr,
        )
        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
        self.rho.grad = result.rho.to(self.rho.dtype).reshape(self.rho.shape)
        self.rho_optimizer.step()
        self.rho_optimizer.zero_grad(set_to_none=True)
        lam_grad = result.lam.mean()  # dL_V/dλ; per layer, their mean (as meta-sparsity logs it)
        self.hypergradients += 1
        positive = lam_grad > 0
        positive = positive.cpu() if positive.device.type == "mps" else positive  # MPS has no float64
        self.positive = positive.to(torch.float64) + self.positive
        self.last = {
            "lambda_grad": lam_grad.detach(),
            "lambda_grad_positive": self.positive / self.hypergradients,
            "hyper_residual": result.solve.residual.detach(),
        }

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.rho is not None:
            state["rho"] = self.rho.detach().cpu()
        return state


METHOD = MethodInfo(
    name="implicit-lambda",
    family="sparse",
    summary="fixed-λ training whose λ is learned by implicit differentiation of a meta-validation loss",
    method=ImplicitLambda,
    config=ImplicitLambdaConfig,
    paper="Bertrand et al., Implicit differentiation of Lasso-type models for hyperparameter optimization (2020, "
    "arXiv 2002.08943); Lorraine, Vicol & Duvenaud, Optimizing Millions of Hyperparameters by Implicit "
    "Differentiation (2020, arXiv 1911.02590)",
    link="https://arxiv.org/abs/2002.08943",
    deviations="group lasso (Ω = Σ √n_g ‖θ_g‖) on the shared conv channel groups of a non-convex multi-task network, "
    "not a convex Lasso-type model: the implicit function theorem is applied on the active set of the current "
    "weights, which are an approximate, stochastic solution (the weights after each phase of proximal Adam, "
    "warm-started, not a solve to convergence), with F and L_V estimated on mini-batches; H_A⁻¹ by a fixed "
    "number of damped conjugate-gradient steps (or a truncated Neumann series, Lorraine et al.'s choice), a "
    "direction of non-positive curvature stopping CG; λ = exp(ρ) updated by Adam on ρ (sparse-ho uses "
    "gradient steps on log λ as well); L_V on a meta-validation split carved (fixed, 20 %) from the training "
    "split, training batches from the rest; BatchNorm in training mode (batch statistics) inside F and L_V, its "
    "running statistics left as training made them",
)
