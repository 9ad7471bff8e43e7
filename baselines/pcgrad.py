"""PCGrad (Yu et al. 2020): project each task gradient off the gradients it conflicts with, then sum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mtbench.aggregators import pcgrad
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod, assign_gradient, backward_heads, shared_parameters, task_gradients
from mtbench.training import TrainContext


@dataclass
class PCGradConfig:
    """No options: the projection has no hyper-parameters (the task order is random, seeded by (seed, step))."""


class PCGrad(MTLMethod):
    """Shared backbone: Σ_i g_i^PC (`mtbench.aggregators.pcgrad`); heads: their own task's gradient."""

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> None:
        current = [losses[t] for t in ctx.task_names]
        backward_heads(self.model, current)
        shared = shared_parameters(self.model)
        G = task_gradients(current, shared)
        assign_gradient(shared, pcgrad(G, np.random.default_rng([ctx.seed, step])))


METHOD = MethodInfo(
    name="pcgrad",
    summary="PCGrad: project conflicting task gradients of the shared backbone, then sum",
    method=PCGrad,
    config=PCGradConfig,
    paper="Yu, Kumar, Gupta, Levine, Hausman & Finn, Gradient Surgery for Multi-Task Learning (2020)",
    link="https://arxiv.org/abs/2001.06782",
    deviations="surgery on the shared backbone's parameters only (heads get their own task's gradient, as in "
    "the paper's multi-head setting); the random task order is drawn from (seed, step), so runs "
    "are reproducible",
)
