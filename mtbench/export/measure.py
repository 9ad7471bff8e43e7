"""Inference accounting of any network (dense or compact): parameters, FLOPs, latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics not counted)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, images: Tensor, tasks: Sequence[str]) -> int:
    """FLOPs of one eval-mode forward, by ``torch.utils.flop_counter.FlopCounterMode`` (convs, linears)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(images, tasks)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def latency(module: nn.Module, images: Tensor, tasks: Sequence[str], repeats: int = 10, warmup: int = 3) -> float:
    """Seconds per eval-mode forward: median of ``repeats`` timed runs after ``warmup`` untimed ones (`interleaved`
    with one candidate)."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            timed = interleaved({"module": lambda x: module(x, tasks)}, images, repeats=repeats, warmup=warmup)
    finally:
        module.train(was_training)
    return statistics.median(timed["module"])


def interleaved(
    candidates: Mapping[str, Callable[[Tensor], Any]], images: Tensor, *, repeats: int = 20, warmup: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, timed in rounds: after ``warmup`` untimed calls of each, every round
    calls every candidate once (the order rotated by one each round, so none always runs first); ``repeats``
    rounds. A slow spell of the machine then falls on all candidates alike, not on one."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            for _ in range(warmup):
                candidates[name](images)
        sync()
        for round_ in range(max(1, repeats)):
            shift = round_ % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                candidates[name](images)
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def quartiles(times: Sequence[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) of ``times`` (all three the value itself for one time)."""
    if len(times) < 2:
        return times[0], times[0], times[0]
    low, median, high = statistics.quantiles(times, n=4, method="inclusive")
    return low, median, high
