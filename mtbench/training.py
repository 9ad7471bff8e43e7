"""The training engine every method uses: data in memory, the step loop, checkpoints, training FLOPs.

A method (see `Method`) owns its model(s) and optimiser(s) and implements ``step``; the engine
draws batches and episodes, runs the loop with a progress bar, records the history (losses, λ,
sparsity, FLOPs of every ``FLOP_COUNT_EVERY``-th logged step) and writes resumable checkpoints. How a
trained method is scored — BatchNorm recalibration, the joint score, the meta-test, trivial predictors —
is `mtbench.protocol`, the same for every method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import json
import pickle
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtbench.data.io import atomic_write_bytes
from mtbench.episodes import Episode, EpisodeSampler, TaskView, meta_validation_split
from mtbench.errors import ConfigError, MtbenchError, OutputError
from mtbench.losses import task_loss
from mtbench.models import MultiTaskNet, init_seeded
from mtbench.presets import Budget
from mtbench.sparsity import Axis, sparsity_stats
from mtbench.specs import TaskSpec
from mtbench.train_state import load_method_state, method_state

Batch = dict[str, Tensor]


# --- data ---------------------------------------------------------------------------------------------


def _resize(name: str, value: Tensor, size: tuple[int, int]) -> Tensor:
    if value.dim() < 3 or tuple(value.shape[-2:]) == size:
        return value
    if name == "image":
        return F.interpolate(value, size=size, mode="bilinear", align_corners=False)
    if value.dtype == torch.int64:  # label maps (N, H, W)
        return F.interpolate(value[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return F.interpolate(value, size=size, mode="nearest")  # depth/normal/edge keep exact values


#: uint8 code k -> the float32 a reader makes of it (``np.float32(k) / 255.0``, as `to_chw_image` and the
#: Arrow cache compute it). Decoding by table lookup gives those floats bit for bit on every device (CUDA
#: divides by a scalar as a multiplication by its reciprocal, which can differ in the last bit).
_UNIT_TABLE = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0
_UNIT_TABLES: dict[torch.device, Tensor] = {}
#: storage types tried for integer arrays, narrowest first
_INT_TYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64)


def _unit_table(device: torch.device) -> Tensor:
    if device not in _UNIT_TABLES:
        _UNIT_TABLES[device] = torch.from_numpy(_UNIT_TABLE).to(device)
    return _UNIT_TABLES[device]


def _quantise(image: np.ndarray) -> np.ndarray:
    """The nearest uint8 code of each pixel of a float image in [0, 1]."""
    return np.clip(np.rint(image * np.float32(255.0)), 0, 255).astype(np.uint8)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bits (-0.0 is not 0.0, NaN is itself)."""
    flat = [np.ascontiguousarray(x).reshape(-1).view(np.uint8) for x in (a, b)]
    return a.shape == b.shape and np.array_equal(*flat)


def _unit_codes(image: np.ndarray) -> np.ndarray | None:
    """uint8 codes whose `_UNIT_TABLE` values are exactly ``image`` (float32), or None if a pixel has none."""
    if image.dtype != np.float32:
        return None
    codes = _quantise(image)
    return codes if _same_bits(_UNIT_TABLE[codes], image) else None


def resized_sample(
    key: str, value: np.ndarray, codes: np.ndarray | None, resolution: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One sample's array resized to ``resolution`` (images bilinear, targets nearest; unchanged without one or
    at that size already); an 8-bit image's ``codes`` become the nearest uint8 codes of the resized floats."""
    if resolution is None or value.ndim < 2 or tuple(value.shape[-2:]) == tuple(resolution):
        return value, codes
    value = _resize(key, torch.from_numpy(np.ascontiguousarray(value))[None], resolution)[0].numpy()
    return value, None if codes is None else _quantise(value)


class _Column:
    """One key of a `TensorSet` being filled sample by sample, in the narrowest exact storage.

    Codecs: ``unit`` (images: uint8 code k of the float k/255, decoded through `_UNIT_TABLE`), ``cast`` (a
    narrower type holding every value exactly: int8 class maps with -1 = ignore, uint8 0/1 edge maps and
    attributes; decoded by a cast to the reader's dtype), ``raw`` (the reader's array as it is). The first
    sample that does not fit widens the storage; the rows filled so far are converted exactly.
    """

    def __init__(self, name: str, count: int) -> None:
        self.name, self.count = name, count
        self.codec: str | None = None
        self.canonical: np.dtype | None = None
        self.array: np.ndarray | None = None
        self.low = self.high = 0

    def _encode(self, value: np.ndarray, codes: np.ndarray | None) -> tuple[np.ndarray, np.dtype]:
        if self.codec == "unit":
            if codes is not None:
                return codes, np.dtype(np.uint8)
            self.codec = "raw"
        elif self.codec == "cast" and value.dtype.kind in "iu":
            if value.size:
                self.low, self.high = min(self.low, int(value.min())), max(self.high, int(value.max()))
            kind = next(k for k in _INT_TYPES if np.iinfo(k).min <= self.low and self.high <= np.iinfo(k).max)
            return value, np.dtype(kind)
        elif self.codec == "cast" and value.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # NaN or out of range: the round trip below fails
                small = value.astype(np.uint8)  # integral values in 0..255 (0/1 maps) survive the round trip
            if _same_bits(small.astype(value.dtype), value):
                return small, np.dtype(np.uint8)
            self.codec = "raw"
        return value, value.dtype

    def put(self, index: int, value: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Store ``value`` (the reader's array, resized) in row ``index``; ``codes``: its uint8 codes if an image."""
        if self.array is None:
            self.canonical = value.dtype
            narrowable = self.name != "image" and value.dtype.kind in "iuf"
            self.codec = "unit" if codes is not None else "cast" if narrowable else "raw"
        encoded, dtype = self._encode(value, codes)
        if self.array is None:
            self.array = np.empty((self.count, *encoded.shape), dtype=dtype)
        elif self.array.dtype != dtype:
            wider = np.empty(self.array.shape, dtype=dtype)
            if self.name == "image" and self.array.dtype == np.uint8 and dtype.kind == "f":
                np.take(_UNIT_TABLE, self.array[:index], out=wider[:index])
            else:
                wider[:index] = self.array[:index]  # integers and 0/1 floats convert exactly
            self.array = wider
        self.array[index] = encoded

    def tensor(self) -> tuple[Tensor, str | torch.dtype | None]:
        """The filled storage, and how `TensorSet.batch` decodes it (None: as stored)."""
        assert self.array is not None and self.canonical is not None
        tensor = torch.from_numpy(self.array)
        if self.codec == "unit":
            return tensor, "unit"
        decoded = torch.from_numpy(np.empty(0, dtype=self.canonical)).dtype
        return tensor, None if tensor.dtype == decoded else decoded


class TensorSet:
    """A split held in memory as tensors: ``image`` and one tensor per target, stored compactly.

    `load` stores images as uint8 where every pixel is exactly k/255 (8-bit sources: JPEG/PNG, the uint8
    Arrow cache) and as float32 otherwise (the MTAN .npy tree and the NYU parquet mirror hold floats that
    are not); integer label maps in the narrowest integer type holding their values (int8: -1 = ignore and
    up to 127 classes), 0/1 float maps and attributes as uint8, other floats (depth, normals) as float32.
    ``decode[key]`` says how `batch` restores the reader's values on the device: ``"unit"`` (uint8 codes
    through `_UNIT_TABLE`) or a dtype to cast to; a key without one is used as stored (a set built from
    tensors directly, as in tests, has none).
    """

    def __init__(self, tensors: dict[str, Tensor], decode: Mapping[str, str | torch.dtype] | None = None) -> None:
        self.tensors = tensors
        self.decode = {key: how for key, how in (decode or {}).items() if key in tensors}

    @classmethod
    def load(
        cls,
        read: Callable[[int, Sequence[str]], dict[str, np.ndarray]],
        count: int,
        targets: Sequence[str],
        resolution: tuple[int, int] | None = None,
        *,
        images: bool = True,
    ) -> TensorSet:
        """Read ``count`` samples into preallocated arrays, one sample at a time.

        With ``resolution``, each sample is resized into its slot (images bilinear, targets nearest) before
        the next is read; an 8-bit image keeps the nearest uint8 code of its resized float. ``images=False``
        keeps the targets only: ``read`` is then called with ``image=False`` (a reader then decodes no image).
        """
        columns: dict[str, _Column] = {}
        for index in range(count):
            sample = read(index, targets) if images else read(index, targets, image=False)
            for key, value in sample.items():
                if key == "image" and not images:
                    continue
                column = columns.setdefault(key, _Column(key, count))
                codes = _unit_codes(value) if key == "image" and column.codec in (None, "unit") else None
                value, codes = resized_sample(key, value, codes, resolution)
                column.put(index, value, codes)
        tensors: dict[str, Tensor] = {}
        decode: dict[str, str | torch.dtype] = {}
        for key, column in columns.items():
            tensors[key], how = column.tensor()
            if how is not None:
                decode[key] = how
        return cls(tensors, decode)

    def __len__(self) -> int:
        return len(self.tensors["image"] if "image" in self.tensors else next(iter(self.tensors.values())))

    @property
    def nbytes(self) -> int:
        """Bytes held by this set's tensors (storage shared with another set counts in both)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors.values())

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images as the network sees them."""
        return (int(self.tensors["image"].shape[-2]), int(self.tensors["image"].shape[-1]))

    def select(self, keys: Sequence[str], *others: TensorSet) -> TensorSet:
        """A set of ``keys``, taken from this set or else from ``others``, sharing their storage: no copy."""
        tensors: dict[str, Tensor] = {}
        decode: dict[str, str | torch.dtype] = {}
        for key in keys:
            source = next(s for s in (self, *others) if key in s.tensors)
            tensors[key] = source.tensors[key]
            if key in source.decode:
                decode[key] = source.decode[key]
        return TensorSet(tensors, decode)

    def batch(self, indices: Sequence[int], keys: Sequence[str], device: torch.device) -> Batch:
        """Samples ``indices``: moved to ``device`` in their stored types, decoded there (images to float)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        out = {}
        for key in ("image", *keys):
            stored = self.tensors[key]
            value = stored[index.to(stored.device)].to(device, non_blocking=True)
            how = self.decode.get(key)
            if how == "unit":
                value = _unit_table(value.device)[value.long()]
            elif how is not None:
                value = value.to(how)
            out[key] = value
        return out

    def to(self, device: torch.device) -> TensorSet:
        """This set with its compact tensors moved to ``device`` (a GPU-resident training set: batches are
        gathered there, no host copy per step)."""
        return TensorSet({key: t.to(device) for key, t in self.tensors.items()}, self.decode)

    def fetch(
        self,
        requests: Sequence[Sequence[int]],
        keys: Sequence[str],
        device: torch.device,
        *,
        ahead: Callable[[int], Sequence[Sequence[int]] | None] | None = None,
        position: int = 0,
        stream: Any = None,
    ) -> list[Batch]:
        """One `batch` per request. ``ahead``/``position``/``stream`` let a `mtbench.streaming.StreamingSet`
        read the next requests in the background; a set in memory has nothing to prefetch."""
        return [self.batch(indices, keys, device) for indices in requests]

    def close(self) -> None:
        """Nothing to stop (a `mtbench.streaming.StreamingSet` stops its workers)."""


class MetaTestData:
    """The meta-test's sets: one image tensor per split shared by every task's sets, targets per task.

    ``splits[role]`` (role ``train`` or ``test``) is ``(split name, samples to use)``; ``read(split, index,
    targets)`` reads one sample. ``given[role]``: a set already in memory (the training set): its images and
    targets are reused (no copy, no read) when it holds the same number of samples. ``together[role]``:
    targets read in one pass over the split when the first of them is needed (the held-out tasks' targets
    of the training split: with the training set's own pass, that split is read at most twice per run).
    `done` releases a task's targets, `close` everything; ``passes`` counts the passes over each role.
    """

    def __init__(
        self,
        read: Callable[[str, int, Sequence[str]], dict[str, np.ndarray]],
        splits: Mapping[str, tuple[str, int]],
        resolution: tuple[int, int] | None = None,
        *,
        given: Mapping[str, TensorSet] | None = None,
        together: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.read, self.splits, self.resolution = read, dict(splits), resolution
        self.given = {role: data for role, data in (given or {}).items() if len(data) == self.splits[role][1]}
        self.together = {role: list(targets) for role, targets in (together or {}).items()}
        self.images: dict[str, TensorSet] = {}
        self.targets: dict[str, dict[str, TensorSet]] = {}
        self.passes: dict[str, int] = {role: 0 for role in self.splits}

    def get(self, role: str, target: str) -> TensorSet:
        """``image`` and ``target`` of the ``role`` split (read on first use)."""
        given = self.given.get(role)
        if given is not None and target in given.tensors:
            return given.select(["image", target])
        own = self.targets.setdefault(role, {})
        if target not in own:
            known = set(own) | set(given.tensors if given is not None else ())
            wanted = [target, *(t for t in self.together.get(role, ()) if t != target and t not in known)]
            images = given is None and role not in self.images
            name, count = self.splits[role]
            loaded = TensorSet.load(
                lambda i, targets, **options: self.read(name, i, targets, **options),
                count,
                wanted,
                self.resolution,
                images=images,
            )
            self.passes[role] += 1
            if images:
                self.images[role] = loaded.select(["image"])
            for key in dict.fromkeys(wanted):
                own[key] = loaded.select([key])
        images_of = given if given is not None else self.images[role]
        return images_of.select(["image", target], own[target])

    def done(self, target: str) -> None:
        """Release ``target``'s sets (a task is finished); the images stay for the next task."""
        for own in self.targets.values():
            own.pop(target, None)

    def close(self) -> None:
        self.images.clear()
        self.targets.clear()


def _single_request(indices: Callable[..., list[int]], position: int, **options: Any) -> list[list[int]]:
    return [indices(position, **options)]


def _episode_requests(sampler: EpisodeSampler, index: int) -> list[tuple[int, ...]]:
    episode = sampler.episode(index)
    return [episode.support, episode.query]


def _bounded(ahead: Callable[[int], Any], end: int, position: int) -> Any:
    return ahead(position) if position < end else None


def train_indices(step: int, *, seed: int, salt: int, size: int, batch: int) -> list[int]:
    """The training batch of ``step`` of a split of ``size`` samples: depends only on (seed, step, salt)."""
    rng = np.random.default_rng([seed, step, salt, 17])
    return rng.choice(size, size=min(batch, size), replace=False).tolist()


def finetune_indices(step: int, *, seed: int, size: int, batch: int) -> list[int]:
    """The meta-test fine-tuning batch of ``step``: depends only on (seed, step)."""
    rng = np.random.default_rng([seed, step, 29])
    return rng.choice(size, size=min(batch, size), replace=False).tolist()


def eval_chunk(size: int, batch: int, position: int) -> list[range] | None:
    """The ``position``-th evaluation batch of a split of ``size`` samples (None past the end)."""
    first = position * batch
    return [range(first, min(first + batch, size))] if first < size else None


# --- context ------------------------------------------------------------------------------------------


@dataclass
class TrainContext:
    """What a method gets from the engine."""

    budget: Budget
    seen: list[TaskSpec]
    train: TensorSet
    seed: int
    device: torch.device
    channels_last: bool = False
    autocast: bool = False
    #: Deterministic kernels wanted (the runner's ``--deterministic``): False lets `make_optimizer` pick fused
    #: Adam on CUDA. The CPU path does not read it.
    deterministic: bool = True
    #: Run the forwards of the networks made by `new_model` through `torch.compile` (``--compile``).
    compile: bool = False
    by_name: dict[str, TaskSpec] = field(init=False)
    _compiled: dict[int, nn.Module] = field(init=False, repr=False, compare=False)
    _sampler: EpisodeSampler | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.seen}
        self._compiled = {}
        self._sampler = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.seen]

    def new_model(self, tasks: Sequence[TaskSpec] | None = None, seed_offset: int = 0) -> MultiTaskNet:
        """A freshly, deterministically initialised network (same init for every method at one seed)."""
        model = MultiTaskNet(self.budget.arch, tasks if tasks is not None else self.seen)
        init_seeded(model, self.seed * 1000 + seed_offset)
        model = model.to(self.device)
        model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        if self.compile:
            # compiled lazily on its first forward; only networks made here are compiled: learn2learn's
            # per-step clones and the meta-test's copies would each compile again, so they run eagerly
            self._compiled[id(model)] = torch.compile(model)
        return model

    def _layout(self, batch: Batch) -> Batch:
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def batch(self, indices: Sequence[int], tasks: Sequence[str]) -> Batch:
        return self._layout(self.train.batch(indices, [self.by_name[t].target for t in tasks], self.device))

    def fetch(
        self,
        requests: Sequence[Sequence[int]],
        tasks: Sequence[str],
        ahead: Callable[[int], Sequence[Sequence[int]] | None],
        position: int,
        stream: Any,
    ) -> list[Batch]:
        """The batches ``requests`` of the training set; ``ahead(k)`` is the same pure function of the position
        that made ``requests`` (``position``), so a streaming set can read the next ones in the background."""
        keys = [self.by_name[t].target for t in tasks]
        batches = self.train.fetch(requests, keys, self.device, ahead=ahead, position=position, stream=stream)
        return [self._layout(b) for b in batches]

    def train_indices(self, step: int, salt: int = 0) -> list[int]:
        """The training batch of ``step``: depends only on (seed, step, salt)."""
        return train_indices(step, seed=self.seed, salt=salt, size=len(self.train), batch=self.budget.batch_size)

    def train_batch(self, step: int, tasks: Sequence[str] | None = None, salt: int = 0) -> Batch:
        tasks = tasks or self.task_names
        ahead = functools.partial(_single_request, self.train_indices, salt=salt)
        return self.fetch(ahead(step), tasks, ahead, step, ("train", salt))[0]

    def episodes(self, combinations: str = "subsets", meta_val_fraction: float | None = None) -> EpisodeSampler:
        """Episodes over the seen tasks; with ``meta_val_fraction``, queries come from a meta-validation
        split carved from the training split (`meta_validation_split`) and supports from the rest."""
        pools = (
            meta_validation_split(len(self.train), meta_val_fraction, minimum=self.budget.batch_size)
            if meta_val_fraction
            else (None, None)
        )
        self._sampler = EpisodeSampler(
            len(self.train),
            self.task_names,
            support_size=self.budget.batch_size,
            query_size=self.budget.batch_size,
            seed=self.seed,
            combinations=combinations,  # type: ignore[arg-type]
            support_pool=pools[0],
            query_pool=pools[1],
        )
        return self._sampler

    def episode_batches(self, episode: Episode) -> tuple[Batch, Batch]:
        """Support and query batches of ``episode``; the episodes after it (of the last `episodes` sampler) are
        read ahead by a streaming set."""
        sampler = self._sampler
        ahead = functools.partial(_episode_requests, sampler) if sampler is not None else lambda _: None
        support, query = self.fetch([episode.support, episode.query], episode.tasks, ahead, episode.index, "episodes")
        return support, query

    def make_optimizer(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | None = None,
        optimizer_class: type[torch.optim.Adam] = torch.optim.Adam,
        **options: Any,
    ) -> torch.optim.Adam:
        """The engine's optimiser: every Adam of the training loop and of the meta-test is built here.

        Args:
            params: parameters, or parameter groups as for `torch.optim.Adam`.
            lr: learning rate (default: the budget's ``lr``; the meta-test passes ``finetune_lr``).
            optimizer_class: `torch.optim.Adam` or a subclass taking Adam's options (`mtbench.sparsity.ProximalAdam`).
            **options: the remaining options of ``optimizer_class`` (``weight_decay``, ``prox`` …).

        Torch picks the implementation on CPU (the per-parameter loop; CPU runs are never changed here). On
        CUDA, unless the run is deterministic (``deterministic``), fused Adam (``fused=True``: one kernel
        for the whole update) is chosen when ``optimizer_class`` accepts it and the caller chose neither
        ``fused`` nor ``foreach``; it rounds the update differently from ``foreach``, which is why a
        deterministic CUDA run keeps ``foreach``.
        """
        if (
            self.device.type == "cuda"
            and not self.deterministic
            and "fused" not in options
            and "foreach" not in options
            and accepts_fused(optimizer_class)
        ):
            options["fused"] = True
        return optimizer_class(params, lr=self.budget.lr if lr is None else lr, **options)

    def forward(self, model: nn.Module, images: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        """``model(images, tasks)`` under the context's autocast; compiled when ``compile`` and ``model`` is one
        of `new_model`'s networks."""
        module = self._compiled.get(id(model), model) if self.compile else model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return module(images, tasks)

    def losses(self, model: nn.Module, batch: Batch, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Per-task training losses of ``model`` on ``batch`` (the loss functions live in `mtbench.losses`)."""
        outputs = self.forward(model, batch["image"], tasks)
        if self.autocast:  # losses in float32, whatever precision the forward ran in
            outputs = {t: value.float() for t, value in outputs.items()}
        return {t: task_loss(self.by_name[t], outputs[t], batch[self.by_name[t].target]) for t in tasks}


def accepts_fused(optimizer_class: type[torch.optim.Optimizer]) -> bool:
    """Whether ``optimizer_class`` (or the class whose ``__init__`` it forwards to) takes ``fused``."""
    for cls in optimizer_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        if "fused" in parameters:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return False
    return False


# --- methods ------------------------------------------------------------------------------------------


class Method:
    """Base class of every method. Subclasses set ``config`` in ``__init__`` and implement the hooks.

    Hooks: ``setup(ctx)`` builds models and optimisers; ``step(ctx, step)`` performs one outer update
    and returns scalars to log (0-dim tensors left on their device, or numbers: `train` converts them to
    floats only at the steps it records, so a step need not wait for the device); ``model_for(task)``
    gives the network the meta-test starts from;
    ``lam()`` reports the current sparsity strength λ, if the method has one.
    """

    kind: ClassVar[str] = "mtl"
    #: tensor attributes saved beside the network in the run's ``checkpoint.pt`` (e.g. learned task weights)
    saved_tensors: ClassVar[tuple[str, ...]] = ()
    #: attributes that ``setup(ctx)`` rebuilds identically, so a training checkpoint need not hold them
    rebuilt_by_setup: ClassVar[frozenset[str]] = frozenset({"config"})

    def __init__(self, config: Any) -> None:
        self.config = config
        self.model: MultiTaskNet | None = None

    def setup(self, ctx: TrainContext) -> None:
        raise NotImplementedError

    def step(self, ctx: TrainContext, step: int) -> Mapping[str, Tensor | float]:
        raise NotImplementedError

    def model_for(self, task: TaskSpec, ctx: TrainContext) -> MultiTaskNet:
        assert self.model is not None, "setup() was not called"
        return self.model

    def lam(self) -> float | list[float] | None:
        return None

    def train_steps(self, ctx: TrainContext) -> int:
        """Outer updates to run: the budget's ``steps`` (a method may match another's training FLOPs instead,
        e.g. `mtbench.meta.MetaConfig.match_ew_flops`); called after ``setup``, and its value must be kept in the
        method's state, since a resumed run calls it again."""
        return ctx.budget.steps

    def held_out_steps(self, ctx: TrainContext) -> int:
        """Fine-tuning steps of a held-out task in the meta-test (the budget's ``finetune_steps``; `stl`, the
        reference, trains its held-out networks for the training budget's ``steps``)."""
        return ctx.budget.finetune_steps

    @property
    def sparsity_axis(self) -> Axis:
        """The channel-group axis of this method's sparsity (``in`` unless its config says otherwise).

        Statistics, the meta-test masks and the run's sparsity record all read it, so an ``axis=out``
        run reports and keeps output-channel groups.
        """
        return getattr(self.config, "axis", "in")

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict()} if self.model is not None else {}
        return {**state, **{name: getattr(self, name).detach().cpu() for name in self.saved_tensors}}

    def training_state(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain data (`mtbench.train_state`): every attribute
        but `rebuilt_by_setup`. Override it (with `load_training_state`) for state the default cannot hold."""
        return method_state(self, self.rebuilt_by_setup)

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        """Restore `training_state`'s output into this method, which ``setup(ctx)`` has just built."""
        load_method_state(self, state)


# --- the loop -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings, stdout and stderr: for imports that print banners (learn2learn's gym)."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


#: Steps between two training checkpoints of `train` (one more is written after the last step). At the
#: quick budget a checkpoint (the method's training state, written and fsynced) costs about 0.1 % of the
#: training time it protects (measured: ~0.01–0.03 s per write against ~9–30 s per 100 steps on one CPU core).
CHECKPOINT_EVERY = 100
#: Training FLOPs are counted (`torch.utils.flop_counter.FlopCounterMode`) on every this-many-th logged step;
#: their mean times the step count is the run's training compute (`training_cost`).
FLOP_COUNT_EVERY = 5
#: Version of the checkpoint's layout; a file of another version is refused, never misread.
CHECKPOINT_FORMAT = 2  # 2: tensors and plain data, read with weights_only=True; 1 pickled the method


class CheckpointError(MtbenchError):
    """A training checkpoint cannot be resumed: another configuration's, unreadable, or of another format."""


@dataclass
class TrainOutcome:
    """What `train` returns.

    Attributes:
        history: the logged entries (every ``log_every`` steps and the last), over the whole run.
        seconds: training time over every session of the run (time lost to a kill after the last
            checkpoint is not counted).
        lam_start / lam_end: λ before the first and after the last step.
        resumed_from: the step this session started at (0: not resumed).
        steps: the outer updates of the whole run (`Method.train_steps`).
        earlier_seconds: the part of ``seconds`` spent in earlier sessions (0: not resumed).
    """

    history: list[dict[str, Any]]
    seconds: float
    lam_start: Any
    lam_end: Any
    resumed_from: int = 0
    steps: int = 0
    earlier_seconds: float = 0.0


def _counted_flops(run: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def ew_step_flops(ctx: TrainContext) -> float:
    """FLOPs of one equal-weighting step (forward on every seen task, backward of the summed loss) of a fresh
    network on the first training batch: the unit every compute-matched budget is measured in."""
    model = ctx.new_model()
    model.train()

    def step() -> None:
        losses = ctx.losses(model, ctx.train_batch(0), ctx.task_names)
        sum(losses.values()).backward()

    return _counted_flops(step)


def matched_steps(method: Method, ctx: TrainContext, probes: int = 8) -> tuple[int, float, float]:
    """(steps, FLOPs per step of ``method``, of ew) such that ``steps`` of ``method`` cost the training FLOPs of
    the budget's ``steps`` ew steps. ``method``'s step is counted on ``probes`` steps of a copy of it (set up,
    untrained), so the method itself and the global random state are left as they were."""
    states = _rng_states(ctx.device)
    probe = type(method)(method.config)  # a copy made as a resumed run makes one: built, then its state loaded
    probe.setup(ctx)
    probe.load_training_state(method.training_state())
    per_step = float(np.mean([_counted_flops(functools.partial(probe.step, ctx, i)) for i in range(probes)]))
    ew = ew_step_flops(ctx)
    _set_rng_states(states)
    return max(1, round(ctx.budget.steps * ew / per_step)), per_step, ew


def training_flops(history: Sequence[Mapping[str, Any]], steps: int) -> tuple[int, float, float]:
    """(steps counted, mean FLOPs per counted step, extrapolated FLOPs of all ``steps``) from a run's history."""
    counted = [entry["flops"] for entry in history if "flops" in entry]
    mean = float(np.mean(counted)) if counted else 0.0
    return len(counted), mean, mean * steps


def _mean_group_sparsity(method: Method, ctx: TrainContext) -> float:
    models = {id(m): m for m in (method.model_for(t, ctx) for t in ctx.seen)}
    return float(np.mean([sparsity_stats(m, method.sparsity_axis).group_sparsity for m in models.values()]))


def _plain(value: Any) -> Any:
    """``value`` as JSON types (tuples become lists, unknown objects their ``str``), for exact comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def train_identity(method: Method, ctx: TrainContext, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the method's class and config, the budget, the seen tasks,
    the training-set size, the seed and the device type, plus ``extra`` (the runner adds the method's
    registry name and source, the data set's fingerprint and the protocol)."""
    cls = type(method)
    config = method.config
    identity = {
        "method_class": f"{cls.__module__}.{cls.__qualname__}",
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config),
        "budget": dataclasses.asdict(ctx.budget),
        "tasks": ctx.task_names,
        "train_samples": len(ctx.train),
        "seed": ctx.seed,
        "device": ctx.device.type,
        "channels_last": ctx.channels_last,
        "autocast": ctx.autocast,
        **(extra or {}),
    }
    return _plain(identity)


def _differences(ours: Any, theirs: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves where two plain identities differ, as (dotted key, ours, theirs)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = []
        for name in sorted(set(ours) | set(theirs)):
            found += _differences(ours.get(name), theirs.get(name), f"{key}.{name}" if key else name)
        return found
    return [] if ours == theirs else [(key, ours, theirs)]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _checkpoint_problem(path: Path, problem: str, found: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {problem}",
        expected=f"a checkpoint (format {CHECKPOINT_FORMAT}) written by `train` for this configuration",
        found=found,
        fix=f"start from step 0 with `mtbench run … --fresh` (it replaces the file), or remove {path}",
    )


def read_checkpoint(path: Path, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The training state saved at ``path``, after checking it belongs to ``identity``.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so reading a
    checkpoint from anywhere (a shared runs folder, a colleague's archive) can never run code. A file that
    needs more — the pickled objects of an older mtbench's format 1, or a file made to run code — is refused
    without being unpickled.

    Raises:
        CheckpointError: the file cannot be read, holds more than tensors and plain data, is of another
            format, or belongs to another configuration (the message names every differing field).
    """
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:  # not a torch file, truncated, …
            raise _checkpoint_problem(path, "the file cannot be read", f"{type(error).__name__}: {error}") from None
        raise CheckpointError(  # weights_only met an object to rebuild: it would have run code to do so
            f"cannot resume from {path}: it holds pickled objects, not only tensors and plain data",
            expected=f"a checkpoint of format {CHECKPOINT_FORMAT} (tensors and plain data, read without unpickling "
            "any object)",
            found=f"a pickled call of {refused.group(1)} — an older mtbench's checkpoint (format 1 pickled the "
            "whole method), or a file made to run code when unpickled; it was not unpickled",
            fix=f"start from step 0 with `mtbench run … --fresh` (it replaces the file), or remove {path}",
        ) from None
    except Exception as error:  # truncated by a full disk, not a torch file, …
        raise _checkpoint_problem(path, "the file cannot be read", f"{type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = f"format {state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
        raise _checkpoint_problem(path, "not a training checkpoint of this mtbench version", found)
    differences = _differences(_plain(dict(identity)), state.get("identity"))
    if differences:
        shown = differences[:6]
        more = f" (and {len(differences) - len(shown)} more)" if len(differences) > len(shown) else ""
        raise CheckpointError(
            f"{path} holds the checkpoint of another configuration",
            expected="this run's " + "; ".join(f"{key} = {_short(ours)}" for key, ours, _ in shown) + more,
            found="the checkpoint's " + "; ".join(f"{key} = {_short(theirs)}" for key, _, theirs in shown) + more,
            fix=f"resume it with the configuration it was written for, pass another --out, remove {path}, "
            "or rerun with --fresh to discard it and start from step 0",
        )
    return state


def _rng_states(device: torch.device) -> dict[str, Any]:
    """The global random states a step might draw from (torch, CUDA, numpy, Python)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],  # no ndarray
        "python": random.getstate(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])




class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during training, saying where training stood and how to resume.

    A `KeyboardInterrupt`, so code that stops on one still stops; its message is for the user.
    """

    def __init__(self, step: int, steps: int, saved: int | None, checkpoint: Path | None) -> None:
        self.step, self.steps, self.saved, self.checkpoint = step, steps, saved, checkpoint
        if checkpoint is None:
            where = "no checkpoint is written in this mode; the run starts over when rerun"
        elif saved:
            where = f"the checkpoint {checkpoint} holds step {saved}: run the same command to resume from there"
        else:
            where = "no checkpoint was written yet: the same command starts over"
        super().__init__(f"interrupted at step {step} of {steps}; {where} (--fresh starts over)")


def write_checkpoint(path: Path, state: Mapping[str, Any], resumes_from: int | None = None) -> None:
    """Save ``state`` to ``path`` atomically: a reader (a resumed run) sees the old file or the new, never half.

    Raises:
        OutputError: the file cannot be written (a full disk, a quota, permissions): says how much space it
            needs and that the previous checkpoint (``resumes_from``: its step) is intact.
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        kept = (
            f"the previous checkpoint (step {resumes_from}) is intact"
            if resumes_from
            else "no earlier checkpoint exists"
        )
        raise OutputError(
            f"cannot write the training checkpoint {path}: {error.strerror or error}",
            expected=f"{len(data) / 2**20:.1f} MiB of free space beside it, and write permission",
            found=f"{type(error).__name__} [errno {error.errno}] {error.strerror or error}",
            fix=f"free space on that disk (or pass --out on another one); {kept}, and the same command resumes "
            "from it — nothing in the results store was changed",
        ) from None


def train(
    method: Method,
    ctx: TrainContext,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    checkpoint: Path | None = None,
    every: int = CHECKPOINT_EVERY,
    identity: Mapping[str, Any] | None = None,
    resume: bool = True,
    notice: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Run ``budget.steps`` outer updates of ``method``; record losses, λ and sparsity every ``log_every``.

    With ``checkpoint``, the whole training state (the method object pickled with its models, optimisers
    and method-specific state; the next step; the history; the training seconds so far; the global random
    states) is written to that file atomically every ``every`` steps and once more after the last step.
    The file is kept when training ends, so a run killed during the meta-test does not train again; the
    runner removes it once the result is written. Batches and episodes depend only on (seed, step), so a
    resumed run reproduces the uninterrupted one exactly (same device and thread count).

    Args:
        method: a fresh method; on resume its attributes become the checkpoint's (``setup`` is not called).
        ctx: the training context.
        progress: ``progress(done, total, last history entry)`` after every step (and once on resume).
        checkpoint: the checkpoint file (None: no checkpoints).
        every: steps between two checkpoints.
        identity: fields beside `train_identity` that a checkpoint must match (data fingerprint …).
        resume: continue from ``checkpoint`` when it exists; False removes it and starts from step 0.
        notice: receives "resuming from step k of N …" when a checkpoint is resumed.

    Raises:
        CheckpointError: ``checkpoint`` exists, ``resume`` is set and it cannot be resumed (another
            configuration's, unreadable); nothing is trained or overwritten then.
    """
    if every < 1:
        raise ConfigError("checkpoint interval must be at least 1 step", expected="every >= 1", found=str(every))
    key = train_identity(method, ctx, identity) if checkpoint is not None else {}
    first, history, before = 0, [], 0.0
    if checkpoint is not None:
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):  # left by a kill during a write
            stale.unlink(missing_ok=True)
        if not resume:
            checkpoint.unlink(missing_ok=True)
    if checkpoint is not None and checkpoint.is_file():
        state = read_checkpoint(checkpoint, key)
        # a fresh build of the method, then its saved state written into it: networks, optimisers (whose
        # callables, e.g. ProximalAdam's λ of a learned-λ method, come from the fresh build) and the rest
        method.setup(ctx)
        method.load_training_state(state["method"])
        first, history, before, lam_start = state["next_step"], state["history"], state["seconds"], state["lam_start"]
        _set_rng_states(state["rng"])
        steps = method.train_steps(ctx)  # restored with the method (a matched count is not measured again)
        if notice:
            done = "; training was complete, the meta-test follows" if first >= steps else ""
            notice(f"resuming from step {first} of {steps} (checkpoint {checkpoint}{done})")
        if progress and first:
            progress(first, steps, history[-1] if history else {})
    else:
        method.setup(ctx)
        lam_start = method.lam()
        steps = method.train_steps(ctx)
    start = time.perf_counter()
    saved = first if checkpoint is not None else None  # the step the checkpoint on disk resumes from
    done = first
    try:
        for step in range(first, steps):
            counted = step % (FLOP_COUNT_EVERY * ctx.budget.log_every) == 0
            with FlopCounterMode(display=False) if counted else contextlib.nullcontext() as counter:
                logged = method.step(ctx, step)  # device tensors: nothing waits for the device between two records
            if counted or step % ctx.budget.log_every == 0 or step == steps - 1:
                entry = {
                    "step": step,
                    **{k: float(v) for k, v in logged.items()},  # the host sync, at recorded steps only
                    "group_sparsity": _mean_group_sparsity(method, ctx),
                    **({"flops": float(counter.get_total_flops())} if counted else {}),
                }
                lam = method.lam()
                if lam is not None:
                    entry["lambda"] = lam
                history.append(entry)
            done = step + 1
            if checkpoint is not None and (done % every == 0 or done == steps):
                write_checkpoint(
                    checkpoint,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "identity": key,
                        "next_step": done,
                        "steps": steps,
                        "history": history,
                        "seconds": before + time.perf_counter() - start,
                        "lam_start": lam_start,
                        "rng": _rng_states(ctx.device),
                        "method": method.training_state(),
                    },
                    resumes_from=saved,
                )
                saved = done
            if progress:
                progress(done, steps, history[-1] if history else {})
    except KeyboardInterrupt:
        raise TrainingInterrupted(done, steps, saved, checkpoint) from None
    return TrainOutcome(history, before + time.perf_counter() - start, lam_start, method.lam(), first, steps, before)


# --- meta-test ----------------------------------------------------------------------------------------


def _mask_gradients(weights: list[Tensor], masks: list[Tensor]) -> None:
    for weight, mask in zip(weights, masks):
        if weight.grad is not None:
            weight.grad.mul_(mask)


@torch.no_grad()
def apply_masks(weights: list[Tensor], masks: list[Tensor]) -> None:
    """Zero the masked-out groups in place (after an optimiser step, so Adam's momentum cannot revive them)."""
    for weight, mask in zip(weights, masks):
        weight.mul_(mask)


__all__ = [
    "CHECKPOINT_EVERY",
    "Batch",
    "CheckpointError",
    "apply_masks",
    "MetaTestData",
    "Method",
    "TaskView",
    "TensorSet",
    "TrainContext",
    "TrainOutcome",
    "read_checkpoint",
    "train",
    "train_identity",
    "write_checkpoint",
]
