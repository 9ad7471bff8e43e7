"""Benchmarks that print ratios measured in one run (``mtbench bench ...``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mtbench.data.cache import ArrowCacheReader
from mtbench.data.reader import Reader


@dataclass(frozen=True)
class LoaderTiming:
    name: str
    samples: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.samples / self.seconds


def _time_reads(reader: Reader, split: str, targets: tuple[str, ...], count: int) -> float:
    start = time.perf_counter()
    for index in range(count):
        reader.read(split, index, targets)
    return time.perf_counter() - start


def bench_loaders(
    raw: Reader, cache: ArrowCacheReader, *, split: str, count: int, batch: int = 16, repeats: int = 2
) -> list[LoaderTiming]:
    """Samples/s reading ``count`` samples with every target: raw layout, cache one by one, cache in batches.

    Each reader is warmed up once on a few samples (file-system cache, Arrow memory maps) and then
    timed ``repeats`` times; the best time is kept.
    """
    targets = raw.targets()
    count = min(count, raw.num_samples(split))
    for reader in (raw, cache):
        _time_reads(reader, split, targets, min(4, count))
    raw_time = min(_time_reads(raw, split, targets, count) for _ in range(repeats))
    cache_time = min(_time_reads(cache, split, targets, count) for _ in range(repeats))

    def batched() -> float:
        start = time.perf_counter()
        for first in range(0, count, batch):
            cache.read_batch(split, list(range(first, min(first + batch, count))), targets)
        return time.perf_counter() - start

    batch_time = min(batched() for _ in range(repeats))
    return [
        LoaderTiming(f"raw layout ({raw.layout})", count, raw_time),
        LoaderTiming("Arrow cache, one sample at a time", count, cache_time),
        LoaderTiming(f"Arrow cache, batches of {batch}", count, batch_time),
    ]
