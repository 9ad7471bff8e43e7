"""Streaming data: a split read batch by batch from its reader, never held in memory as a whole.

A run holds its splits in memory as compact tensors (`TensorSet`) when they fit its memory budget, and
streams them otherwise (`choose_data_path`; ``mtbench run --data stream`` forces it). `StreamingSet` has
the interface the engine uses of a `TensorSet` (``len``, ``batch``, ``fetch``, ``image_size``) and reads
each batch from the data set's reader — for real data the memory-mapped Arrow cache — through a torch
`DataLoader` with worker processes, pinned memory (on CUDA) and prefetch.

Which samples make a batch never depends on the workers: the training loop still computes every batch's
indices from (seed, step) alone and asks for exactly those. Prefetch only *guesses* the next requests of
a stream (``ahead``: the same pure function of the position the loop uses, e.g. `TrainContext.train_indices`
of the next steps); a prefetched batch is used only when its indices are the ones asked for, otherwise the
batch is read on the spot (counted in ``stats``). Each sample is transformed exactly as `TensorSet.load`
transforms it (same resize, an 8-bit image rounded to its nearest uint8 code after resizing, decoded
through the same table), so the streaming and the in-memory path give the same numbers bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtbench.training import Batch, TensorSet, _unit_codes, _unit_table, resized_sample

Read = Callable[[int, Sequence[str]], dict[str, np.ndarray]]
Requests = tuple[tuple[int, ...], ...]
#: a stream's requests at position ``k`` (one index list per batch), or None past its end
Ahead = Callable[[int], Sequence[Sequence[int]] | None]

DATA_MODES = ("auto", "memory", "stream")
#: share of the machine's memory a run's in-memory data may take before ``auto`` streams
DEFAULT_MEMORY_SHARE = 0.5


def read_sample(read: Read, index: int, keys: Sequence[str], resolution: tuple[int, int] | None) -> dict[str, Tensor]:
    """One sample as `TensorSet.load` stores it: resized; an 8-bit image as its uint8 codes (else float32)."""
    out: dict[str, Tensor] = {}
    for key, value in read(index, keys).items():
        value, codes = resized_sample(key, value, _unit_codes(value) if key == "image" else None, resolution)
        out[key] = torch.from_numpy(np.asarray(codes if codes is not None else value, order="C"))  # keeps 0-d
    return out


def _unit_float(value: Tensor) -> Tensor:
    return _unit_table(value.device)[value.long()] if value.dtype == torch.uint8 else value


def read_batch(read: Read, indices: Sequence[int], keys: Sequence[str], resolution: tuple[int, int] | None) -> Batch:
    """Samples ``indices`` stacked per key (images as uint8 codes when every one of them has codes)."""
    samples = [read_sample(read, i, keys, resolution) for i in indices]
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "image" and len({v.dtype for v in values}) > 1:  # some images are not 8-bit: all as floats
            values = [_unit_float(v) for v in values]
        batch[key] = torch.stack(values)
    return batch


class _Batches(torch.utils.data.Dataset):
    """Map-style data set whose items are whole requests: ``(position, requests)`` -> the batches."""

    def __init__(self, read: Read, keys: Sequence[str], resolution: tuple[int, int] | None) -> None:
        self.read, self.keys, self.resolution = read, tuple(keys), resolution

    def __getitem__(self, item: tuple[int, Requests]) -> tuple[int, Requests, list[Batch]]:
        position, requests = item
        return position, requests, [read_batch(self.read, r, self.keys, self.resolution) for r in requests]

    def __len__(self) -> int:  # pragma: no cover - the sampler, not the length, drives the loader
        raise TypeError("a stream has no length")


class _Schedule(torch.utils.data.Sampler):
    """The guessed requests of positions ``start``, ``start + 1``, … (until ``ahead`` returns None)."""

    def __init__(self, ahead: Ahead) -> None:
        self.ahead, self.start = ahead, 0

    def __iter__(self) -> Iterator[tuple[int, Requests]]:
        position = self.start
        while (requests := self.ahead(position)) is not None:
            yield position, tuple(tuple(int(i) for i in r) for r in requests)
            position += 1


class _Stream:
    """One prefetching `DataLoader` (persistent workers) over a `_Schedule`; restarted when the loop jumps."""

    def __init__(self, dataset: _Batches, ahead: Ahead, workers: int, pin_memory: bool, prefetch: int) -> None:
        self.schedule = _Schedule(ahead)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=self.schedule,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch,
            persistent_workers=True,
        )
        self.iterator: Any = None
        self.next_position: int | None = None

    def take(self, position: int) -> tuple[Requests, list[Batch]] | None:
        """The prefetched item of ``position``, or None (past the schedule's end)."""
        if self.iterator is None or self.next_position != position:
            self.schedule.start = position
            self.iterator = iter(self.loader)  # persistent workers are kept; stale prefetches are dropped
        try:
            got, requests, batches = next(self.iterator)
        except StopIteration:
            self.next_position = None
            return None
        self.next_position = got + 1
        requests = tuple(tuple(int(i) for i in r) for r in requests)  # the loader hands tuples back as lists
        return (requests, batches) if got == position else None

    def close(self) -> None:
        shutdown = getattr(self.iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.iterator = None


class StreamingSet:
    """A split read from ``read(index, keys)`` batch by batch (see the module docstring).

    Args:
        read: reads one sample (image and the requested keys), e.g. `TaskView.read` or a reader's ``read``
            bound to a split (`split_read`); it must be picklable where workers are spawned, not forked.
        count: samples of the split used (indices 0 … count − 1).
        keys: the targets this set provides.
        resolution: resize to ``(H, W)`` as `TensorSet.load` does; None keeps the data's size.
        workers: `DataLoader` worker processes per stream (0: every batch is read in this process).
        pin_memory: pin prefetched batches (CUDA), so host-to-device copies are asynchronous.
        prefetch: batches each worker reads ahead.
    """

    def __init__(
        self,
        read: Read,
        count: int,
        keys: Sequence[str],
        resolution: tuple[int, int] | None = None,
        *,
        workers: int = 0,
        pin_memory: bool = False,
        prefetch: int = 2,
    ) -> None:
        self.read, self.count, self.keys, self.resolution = read, count, tuple(keys), resolution
        self.workers, self.pin_memory, self.prefetch = workers, pin_memory, prefetch
        self.dataset = _Batches(read, self.keys, resolution)
        self.streams: dict[Hashable, _Stream] = {}
        #: batches served from prefetch (``hits``), read on the spot although guessed (``misses``), and read on
        #: the spot without a guess (``direct``)
        self.stats = {"hits": 0, "misses": 0, "direct": 0}
        self._image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Bytes held: none (batches are read when asked for)."""
        return 0

    @property
    def image_size(self) -> tuple[int, int]:
        if self._image_size is None:
            image = read_sample(self.read, 0, (), self.resolution)["image"]
            self._image_size = (int(image.shape[-2]), int(image.shape[-1]))
        return self._image_size

    def _to_device(self, batch: Batch, keys: Sequence[str], device: torch.device) -> Batch:
        out = {}
        for key in ("image", *keys):
            value = batch[key]
            if self.pin_memory and not value.is_pinned():
                value = value.pin_memory()
            out[key] = _unit_float(value.to(device, non_blocking=True))
        return out

    def _check_keys(self, keys: Sequence[str]) -> None:
        unknown = [k for k in keys if k not in self.keys]
        if unknown:
            raise KeyError(f"this streaming set provides {', '.join(self.keys)}, not {', '.join(unknown)}")

    def _read_now(self, indices: Sequence[int], keys: Sequence[str], device: torch.device) -> Batch:
        return self._to_device(read_batch(self.read, list(indices), keys, self.resolution), keys, device)

    def batch(self, indices: Sequence[int], keys: Sequence[str], device: torch.device) -> Batch:
        """Samples ``indices`` (read now), on ``device``, decoded as `TensorSet.batch` decodes them."""
        self._check_keys(keys)
        self.stats["direct"] += 1
        return self._read_now(indices, keys, device)

    def fetch(
        self,
        requests: Sequence[Sequence[int]],
        keys: Sequence[str],
        device: torch.device,
        *,
        ahead: Ahead | None = None,
        position: int = 0,
        stream: Hashable = "default",
    ) -> list[Batch]:
        """The batches ``requests`` of ``position`` of ``stream``; ``ahead(k)`` guesses a position's requests,
        so the next ones are read in the background (see the module docstring)."""
        self._check_keys(keys)
        wanted = tuple(tuple(int(i) for i in r) for r in requests)
        if ahead is None or self.workers == 0:
            self.stats["direct"] += len(wanted)
            return [self._read_now(r, keys, device) for r in wanted]
        if stream not in self.streams:
            self.streams[stream] = _Stream(self.dataset, ahead, self.workers, self.pin_memory, self.prefetch)
        taken = self.streams[stream].take(position)
        if taken is not None and taken[0] == wanted:
            self.stats["hits"] += len(wanted)
            return [self._to_device(b, keys, device) for b in taken[1]]
        self.stats["misses"] += len(wanted)
        return [self._read_now(r, keys, device) for r in wanted]

    def close(self) -> None:
        """Stop the streams' worker processes."""
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()


def split_read(read: Callable[[str, int, Sequence[str]], dict[str, np.ndarray]], split: str) -> Read:
    """``read(split, index, keys)`` bound to ``split`` (picklable when ``read`` is)."""
    return functools.partial(read, split)


class StreamingMetaTestData:
    """The meta-test's sets, streamed: `MetaTestData`'s interface (``get``, ``done``, ``close``), nothing kept.

    ``splits[role]`` (role ``train`` or ``test``) is ``(split name, samples to use)``; ``read(split, index,
    keys)`` reads one sample. Each ``(role, target)`` set is a `StreamingSet`; `done` stops its workers.
    """

    def __init__(
        self,
        read: Callable[[str, int, Sequence[str]], dict[str, np.ndarray]],
        splits: Mapping[str, tuple[str, int]],
        resolution: tuple[int, int] | None = None,
        *,
        workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.read, self.splits, self.resolution = read, dict(splits), resolution
        self.workers, self.pin_memory = workers, pin_memory
        self.sets: dict[tuple[str, str], StreamingSet] = {}
        self.stats = {"hits": 0, "misses": 0, "direct": 0}

    def get(self, role: str, target: str) -> StreamingSet:
        if (role, target) not in self.sets:
            name, count = self.splits[role]
            self.sets[role, target] = StreamingSet(
                split_read(self.read, name), count, [target], self.resolution,
                workers=self.workers, pin_memory=self.pin_memory,
            )
        return self.sets[role, target]

    def _release(self, key: tuple[str, str]) -> None:
        data = self.sets.pop(key)
        data.close()
        for name, value in data.stats.items():
            self.stats[name] += value

    def done(self, target: str) -> None:
        for key in [k for k in self.sets if k[1] == target]:
            self._release(key)

    def close(self) -> None:
        for key in list(self.sets):
            self._release(key)


# --- which path a run takes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPath:
    """How a run holds its data, and why: recorded in the result's environment (``environment.data``)."""

    mode: str  # "memory" or "stream"
    requested: str  # "auto", "memory" or "stream"
    estimate_bytes: int  # the in-memory path's compact sets, estimated from one sample
    budget_bytes: int
    workers: int  # DataLoader workers per stream (stream mode)
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def physical_memory_bytes() -> int:
    """The machine's memory (``sysconf``)."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def default_workers(device: torch.device) -> int:
    """DataLoader workers per stream: half the cores on CUDA (at most 8), one beside the compute on CPU."""
    return min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 1


def sample_bytes(read: Read, keys: Sequence[str], resolution: tuple[int, int] | None) -> int:
    """Bytes one sample takes in a compact in-memory set (`TensorSet.load` of sample 0)."""
    return TensorSet.load(read, 1, keys, resolution).nbytes


def check_data_options(mode: str, budget_gib: float | None, workers: int | None) -> None:
    """`ConfigError` for an unknown ``--data`` mode, a budget that is not positive or a negative worker count."""
    from mtbench.errors import ConfigError

    if mode not in DATA_MODES:
        raise ConfigError(f"unknown data mode {mode!r}", expected=" or ".join(DATA_MODES), found=repr(mode))
    if budget_gib is not None and not budget_gib > 0:
        raise ConfigError("the memory budget must be positive", expected="GiB > 0", found=str(budget_gib))
    if workers is not None and workers < 0:
        raise ConfigError("the worker count cannot be negative", expected="0 or more", found=str(workers))


def choose_data_path(
    requested: str,
    per_sample: int,
    samples: int,
    device: torch.device,
    *,
    budget_gib: float | None = None,
    workers: int | None = None,
) -> DataPath:
    """Memory or streaming for a run holding ``samples`` samples of ``per_sample`` bytes.

    ``auto`` streams when the estimate exceeds the budget (``budget_gib``, default `DEFAULT_MEMORY_SHARE`
    of the machine's memory); ``memory`` and ``stream`` force a path.
    """
    check_data_options(requested, budget_gib, workers)
    budget = int(budget_gib * 2**30) if budget_gib is not None else int(DEFAULT_MEMORY_SHARE * physical_memory_bytes())
    estimate = per_sample * samples
    size = f"{estimate / 2**30:.2f} GiB estimated ({samples:,} samples × {per_sample / 2**20:.3f} MiB)"
    if requested == "auto":
        mode = "stream" if estimate > budget else "memory"
        relation = "exceeds" if mode == "stream" else "fits"
        reason = f"{size} {relation} the memory budget of {budget / 2**30:.2f} GiB"
    else:
        mode, reason = requested, f"forced (--data {requested}); {size}"
    chosen = (workers if workers is not None else default_workers(device)) if mode == "stream" else 0
    return DataPath(mode, requested, estimate, budget, chosen, reason)
