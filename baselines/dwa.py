"""Dynamic weight average (Liu, Johns & Davison 2019, MTAN): weights from the tasks' recent loss ratios."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.training import TrainContext


@dataclass
class DWAConfig:
    """Attributes:
    temperature: T of the softmax over loss ratios (the paper's 2); larger T, more even weights.
    window: steps averaged into each of L_k(t−1) and L_k(t−2) (the paper averages whole epochs;
        1 uses the previous two steps' losses).
    """

    temperature: float = 2.0
    window: int = 1


def dwa_weights(history: Sequence[Sequence[float]], window: int, temperature: float) -> np.ndarray:
    """w_k = K·exp(r_k/T) / Σ_j exp(r_j/T), r_k = L̄_k(t−1) / L̄_k(t−2).

    ``history`` holds the per-step loss vectors, oldest first (at least ``2·window`` of them).
    L̄(t−1) is the mean of the last ``window`` of them and L̄(t−2) the mean of the ``window`` before.
    """
    losses = np.asarray(history, dtype=np.float64)
    if len(losses) < 2 * window:
        raise ValueError(f"DWA needs {2 * window} steps of losses, got {len(losses)}")
    ratios = losses[-window:].mean(axis=0) / losses[-2 * window : -window].mean(axis=0)
    logits = ratios / temperature
    weights = np.exp(logits - logits.max())
    return len(ratios) * weights / weights.sum()


class DynamicWeightAverage(MTLMethod):
    """Minimise Σ_k w_k(t) L_k with w(t) from `dwa_weights` of the previous steps' losses."""

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.history: deque[list[float]] = deque(maxlen=2 * self.config.window)

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        current = [losses[t] for t in ctx.task_names]
        if len(self.history) >= 2 * self.config.window:
            weights = dwa_weights(list(self.history), self.config.window, self.config.temperature)
        else:
            weights = np.ones(len(current))
        sum(float(w) * loss for w, loss in zip(weights, current)).backward()
        self.history.append([float(loss.detach()) for loss in current])
        return torch.from_numpy(weights)


METHOD = MethodInfo(
    name="dwa",
    summary="dynamic weight average: w_k ∝ exp(r_k/T) of the loss ratios r_k = L_k(t−1)/L_k(t−2)",
    method=DynamicWeightAverage,
    config=DWAConfig,
    paper="Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention (2019)",
    link="https://arxiv.org/abs/1803.10704",
    deviations="loss ratios from the training losses of the previous steps (sliding means over `window` steps, "
    "default 1) instead of epoch-averaged losses, since the budget counts steps; equal weights "
    "until 2·window steps have been seen (the paper: the first two epochs)",
)
