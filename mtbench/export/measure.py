"""Inference accounting of any network (dense or compact): parameters, FLOPs, latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

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
    """Seconds per eval-mode forward: median of ``repeats`` timed runs after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    was_training = module.training
    module.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                module(images, tasks)
            sync()
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                module(images, tasks)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        module.train(was_training)
    return statistics.median(times)
