"""Uncertainty weighting (Kendall, Gal & Cipolla 2018): learned per-task log-variances weight the losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.training import TrainContext


@dataclass
class UWConfig:
    """Attributes:
    init_log_var: initial s_k = log σ_k² of every task (0: every weight starts at 1).
    """

    init_log_var: float = 0.0


def uncertainty_loss(losses: Tensor, log_vars: Tensor) -> Tensor:
    """Σ_k exp(−s_k) L_k + s_k for the (K,) losses and log-variances."""
    return (torch.exp(-log_vars) * losses + log_vars).sum()


class UncertaintyWeighting(MTLMethod):
    """Minimise Σ_k exp(−s_k) L_k + s_k jointly over the network and the log-variances s_k."""

    saved_tensors = ("log_vars",)

    def setup(self, ctx: TrainContext) -> None:
        self.log_vars = nn.Parameter(
            torch.full((len(ctx.task_names),), float(self.config.init_log_var), device=ctx.device)
        )
        super().setup(ctx)  # the optimiser is built over trainable_parameters(), s_k included

    def trainable_parameters(self) -> list[Tensor]:
        return [*self.model.parameters(), self.log_vars]

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        """Returns the weights exp(−s_k) of this step's loss (before the optimiser moves s)."""
        uncertainty_loss(torch.stack([losses[t] for t in ctx.task_names]), self.log_vars).backward()
        return torch.exp(-self.log_vars.detach())


METHOD = MethodInfo(
    name="uw",
    summary="uncertainty weighting: learned log-variances s_k, loss Σ exp(−s_k) L_k + s_k",
    method=UncertaintyWeighting,
    config=UWConfig,
    paper="Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry "
    "and Semantics (2018)",
    link="https://arxiv.org/abs/1705.07115",
    deviations="one form for every task, exp(−s_k) L_k + s_k (as in LibMTL/MTAN), instead of the paper's "
    "1/(2σ²) L + log σ for regression and 1/σ² L + log σ for classification; s_k trained by the same "
    "Adam optimiser and learning rate as the network",
)
