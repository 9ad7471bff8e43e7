"""Fixed-λ group sparsity (Less is More): equal weighting + a proximal group-lasso step after each update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.sparsity import prox_group_lasso_, shared_conv_weights
from mtbench.training import TrainContext


@dataclass
class FixedLambdaConfig:
    """Attributes:
    lam: the group-lasso strength λ (hand-tuned; the authors searched 1e-7 … 1e-2 under their
        loss scaling and Adam-preconditioned prox, so their values do not transfer directly).
    axis: group axis, ``in`` (input channels, the authors') or ``out``.
    """

    lam: float = 0.3
    axis: Literal["in", "out"] = "in"


class FixedLambda(MTLMethod):
    """Σ_k L_k with Adam, then W_g ← max(0, 1 − η·λ·√n_g/‖W_g‖) W_g on every shared conv group."""

    def after_step(self, ctx: TrainContext, step: int) -> None:
        weights = [w for _, w in shared_conv_weights(self.model)]
        prox_group_lasso_(weights, ctx.budget.lr * self.config.lam, self.config.axis)

    def lam(self) -> float:
        return self.config.lam


METHOD = MethodInfo(
    name="fixed-lambda",
    summary="group-lasso sparsity of the shared convs with a fixed, hand-tuned λ",
    method=FixedLambda,
    config=FixedLambdaConfig,
    paper="Upadhyay et al., Less is More — towards parsimonious multi-task models using structured sparsity (2023)",
    link="https://arxiv.org/abs/2308.12114",
    deviations="plain block soft-thresholding after each Adam step (the authors precondition the prox by "
    "Adam's denominator); equal task weights",
)
