"""Dynamic weight average (Liu, Johns & Davison 2019, MTAN): weights from the tasks' recent loss ratios."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtbench import sparsity
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.training import TrainContext


@dataclass
class DWAConfig:
    """Attributes:
    temperature: T of the softmax over loss ratios (the paper's 2); larger T, more even weights.
    window: steps averaged into each of L_k(t−1) and L_k(t−2) (the paper averages whole epochs;
        1 uses the previous two steps' losses).
    """

    temperature: float = bounded(2.0, above=0)
    window: int = bounded(1, at_least=1)


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


def dwa_weights_on_device(history: Sequence[Tensor], window: int, temperature: float) -> Tensor:
    """`dwa_weights` of the (K,) loss tensors ``history``, as a float64 tensor on their device.

    Where reading the losses is free (`mtbench.sparsity.host_reads_are_free`: the CPU) this *is*
    `dwa_weights`, in NumPy, so CPU runs keep their numbers bit for bit. Elsewhere the same formula runs in
    float64 torch ops on the device, so the step never waits for it; the means add the ``window`` steps one
    after the other, as NumPy's do, but torch's ``exp`` may round differently from NumPy's in the last bit.
    """
    if len(history) < 2 * window:
        raise ValueError(f"DWA needs {2 * window} steps of losses, got {len(history)}")
    device = history[-1].device
    if sparsity.host_reads_are_free(device):  # looked up here, so one patch of it reaches every caller
        return torch.from_numpy(dwa_weights([row.tolist() for row in history], window, temperature))
    losses = torch.stack([row.to(dtype=torch.float64) for row in history])

    def mean(rows: Tensor) -> Tensor:
        total = rows[0]
        for row in rows[1:]:
            total = total + row
        return total / len(rows)

    ratios = mean(losses[-window:]) / mean(losses[-2 * window : -window])
    logits = ratios / temperature
    weights = torch.exp(logits - logits.max())
    return len(ratios) * weights / weights.sum()


class DynamicWeightAverage(MTLMethod):
    """Minimise Σ_k w_k(t) L_k with w(t) from `dwa_weights` of the previous steps' losses.

    The losses of the last ``2·window`` steps are kept as (K,) tensors on the device and the weights are
    computed there (`dwa_weights_on_device`), so a step reads nothing back to the host.
    """

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.history: deque[Tensor] = deque(maxlen=2 * self.config.window)

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        current = [losses[t] for t in ctx.task_names]
        if self.history and not isinstance(self.history[0], Tensor):  # a checkpoint from when they were floats
            rows = [torch.tensor(row, dtype=current[0].dtype, device=current[0].device) for row in self.history]
            self.history = deque(rows, maxlen=self.history.maxlen)
        if len(self.history) >= 2 * self.config.window:
            weights = dwa_weights_on_device(list(self.history), self.config.window, self.config.temperature)
        else:
            weights = torch.ones(len(current), dtype=torch.float64, device=current[0].device)
        # w_k rounded to the loss dtype, as the former float(w_k) · L_k rounded it: the same products
        factors = weights.to(current[0].dtype)
        sum(w * loss for w, loss in zip(factors, current)).backward()
        self.history.append(torch.stack([loss.detach() for loss in current]))
        return weights


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
