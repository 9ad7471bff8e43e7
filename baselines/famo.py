"""FAMO (Liu et al. 2023): loss weights on the log losses, adapted so every task's log loss falls evenly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.training import TrainContext


@dataclass
class FAMOConfig:
    """Attributes:
    logit_lr: β, the step size of the weight logits ξ (the paper's 0.025).
    weight_decay: γ, the decay of ξ towards 0 (uniform weights) (the paper's 1e-3).
    optimizer: ``adam`` (the authors' code: Adam on ξ with lr β and L2 decay γ) or ``sgd``
        (the paper's Algorithm 1: ξ ← ξ − β(δ + γξ)).
    eps: the offset of the log losses, log(L_k − L_k* + ε), with the minimum losses L_k* = 0.
    """

    logit_lr: float = bounded(0.025, above=0)
    weight_decay: float = bounded(1e-3, at_least=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    eps: float = bounded(1e-8, above=0)


def famo_loss_weights(losses: Tensor, z: Tensor, eps: float) -> Tensor:
    """c·z_k / (L_k + ε) with c = (Σ_j z_j / (L_j + ε))⁻¹: the weights of the ∇L_k in FAMO's update.

    Σ_k weight_k ∇L_k = c Σ_k z_k ∇log(L_k + ε): the gradient of the z-weighted log losses, scaled
    by c so that the K weights sum to 1.
    """
    inverse = z / (losses + eps)
    return inverse / inverse.sum()


def famo_logit_gradient(logits: Tensor, losses_before: Tensor, losses_after: Tensor, eps: float) -> Tensor:
    """δ = (∂z/∂ξ)ᵀ (log(L(t) + ε) − log(L(t+1) + ε)): tasks whose log loss fell most lose weight."""
    decrease = torch.log(losses_before + eps) - torch.log(losses_after + eps)
    xi = logits.detach().requires_grad_(True)
    (delta,) = torch.autograd.grad(torch.softmax(xi, dim=0), xi, grad_outputs=decrease)
    return delta


class FAMO(MTLMethod):
    """Backward Σ_k c·z_k/L_k · L_k (weights detached); after the step, re-measure the batch and update ξ."""

    saved_tensors = ("logits",)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.logits = nn.Parameter(torch.zeros(len(ctx.task_names), device=ctx.device))
        if self.config.optimizer == "adam":
            self.logit_optimizer: torch.optim.Optimizer = ctx.make_optimizer(
                [self.logits], lr=self.config.logit_lr, weight_decay=self.config.weight_decay
            )
        else:
            self.logit_optimizer = torch.optim.SGD(
                [self.logits], lr=self.config.logit_lr, weight_decay=self.config.weight_decay
            )
        self.losses_before: Tensor | None = None

    @property
    def z(self) -> Tensor:
        """The current task weights softmax(ξ)."""
        return torch.softmax(self.logits.detach(), dim=0)

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        """Returns z, the task weights of this step's update (``after_step`` then moves ξ)."""
        current = torch.stack([losses[t] for t in ctx.task_names])
        self.losses_before = current.detach()
        z = self.z
        weights = famo_loss_weights(self.losses_before, z, self.config.eps)
        (weights * current).sum().backward()
        return z

    def update_logits(self, losses_before: Tensor, losses_after: Tensor) -> None:
        """One step of ξ on δ (`famo_logit_gradient`) with the configured optimiser."""
        self.logit_optimizer.zero_grad(set_to_none=True)
        self.logits.grad = famo_logit_gradient(self.logits, losses_before, losses_after, self.config.eps)
        self.logit_optimizer.step()

    def after_step(self, ctx: TrainContext, step: int) -> None:
        assert self.losses_before is not None
        batch = ctx.train_batch(step)  # the step's own batch: its indices depend only on (seed, step)
        with torch.no_grad():
            after = ctx.losses(self.model, batch, ctx.task_names)
        self.update_logits(self.losses_before, torch.stack([after[t] for t in ctx.task_names]).detach())


METHOD = MethodInfo(
    name="famo",
    summary="FAMO: softmax weights on the log losses, adapted to equalise the log-loss decrease",
    method=FAMO,
    config=FAMOConfig,
    paper="Liu, Feng, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization (2023)",
    link="https://arxiv.org/abs/2306.03792",
    deviations="ξ is updated with Adam (lr 0.025, weight decay 1e-3) as in the authors' code, not the plain "
    "step of the paper's Algorithm 1 (optimizer=sgd gives that); the loss after the update is "
    "measured with one extra forward on the same batch in training mode (BatchNorm running "
    "statistics see that forward too); minimum losses L* = 0",
)
