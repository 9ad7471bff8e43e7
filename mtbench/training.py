"""The training engine every method uses: data in memory, the step loop, meta-test, evaluation.

A method (see `Method`) owns its model(s) and optimiser(s) and implements ``step``; the engine
draws batches and episodes, runs the loop with a progress bar, records the history (losses, λ,
sparsity), then runs the same meta-test protocol for every method:

for every task (seen and held out): start from the trained backbone (``method.model_for(task)``),
keep its sparsity mask (zero groups stay zero), keep the task's trained head or attach a fresh one
for a held-out task, fine-tune backbone and head on the task's training split for the budget's
``finetune_steps``, and evaluate on the test split.
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import dataclasses
import io
import json
import pickle
import random
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.data.io import atomic_write_bytes
from mtbench.episodes import Episode, EpisodeSampler, TaskView, meta_validation_split
from mtbench.errors import ConfigError, MtbenchError
from mtbench.losses import task_loss
from mtbench.metrics import evaluator_for
from mtbench.models import MultiTaskNet, init_seeded
from mtbench.presets import Budget
from mtbench.sparsity import Axis, shared_conv_weights, sparsity_stats, zero_group_masks
from mtbench.specs import TaskSpec

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


class TensorSet:
    """A split held in memory as tensors: ``image`` and one tensor per target."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    @classmethod
    def load(
        cls,
        read: Callable[[int, Sequence[str]], dict[str, np.ndarray]],
        count: int,
        targets: Sequence[str],
        resolution: tuple[int, int] | None = None,
    ) -> TensorSet:
        samples = [read(i, targets) for i in range(count)]
        tensors = {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
        if resolution is not None:
            tensors = {key: _resize(key, value, resolution) for key, value in tensors.items()}
        return cls(tensors)

    def __len__(self) -> int:
        return len(self.tensors["image"])

    def batch(self, indices: Sequence[int], keys: Sequence[str], device: torch.device) -> Batch:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {key: self.tensors[key][index].to(device, non_blocking=True) for key in ("image", *keys)}


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
    by_name: dict[str, TaskSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.seen}

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.seen]

    def new_model(self, tasks: Sequence[TaskSpec] | None = None, seed_offset: int = 0) -> MultiTaskNet:
        """A freshly, deterministically initialised network (same init for every method at one seed)."""
        model = MultiTaskNet(self.budget.arch, tasks if tasks is not None else self.seen)
        init_seeded(model, self.seed * 1000 + seed_offset)
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, indices: Sequence[int], tasks: Sequence[str]) -> Batch:
        images_and_targets = self.train.batch(indices, [self.by_name[t].target for t in tasks], self.device)
        if self.channels_last:
            images_and_targets["image"] = images_and_targets["image"].contiguous(memory_format=torch.channels_last)
        return images_and_targets

    def train_indices(self, step: int, salt: int = 0) -> list[int]:
        """The training batch of ``step``: depends only on (seed, step, salt)."""
        rng = np.random.default_rng([self.seed, step, salt, 17])
        return rng.choice(len(self.train), size=min(self.budget.batch_size, len(self.train)), replace=False).tolist()

    def train_batch(self, step: int, tasks: Sequence[str] | None = None, salt: int = 0) -> Batch:
        return self.batch(self.train_indices(step, salt), tasks or self.task_names)

    def episodes(self, combinations: str = "subsets", meta_val_fraction: float | None = None) -> EpisodeSampler:
        """Episodes over the seen tasks; with ``meta_val_fraction``, queries come from a meta-validation
        split carved from the training split (`meta_validation_split`) and supports from the rest."""
        pools = (
            meta_validation_split(len(self.train), meta_val_fraction, minimum=self.budget.batch_size)
            if meta_val_fraction
            else (None, None)
        )
        return EpisodeSampler(
            len(self.train),
            self.task_names,
            support_size=self.budget.batch_size,
            query_size=self.budget.batch_size,
            seed=self.seed,
            combinations=combinations,  # type: ignore[arg-type]
            support_pool=pools[0],
            query_pool=pools[1],
        )

    def episode_batches(self, episode: Episode) -> tuple[Batch, Batch]:
        return self.batch(episode.support, episode.tasks), self.batch(episode.query, episode.tasks)

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

        Torch picks the implementation: the per-parameter loop on CPU, ``foreach`` on CUDA. On CUDA this is
        where fused Adam (``options.setdefault("fused", True)``: one kernel for the whole update) would be
        chosen; it is not, because it rounds the update differently from ``foreach``, so GPU numbers would
        move against the stored ones (CPU runs are never affected).
        """
        return optimizer_class(params, lr=self.budget.lr if lr is None else lr, **options)

    def losses(self, model: nn.Module, batch: Batch, tasks: Sequence[str]) -> dict[str, Tensor]:
        """Per-task training losses of ``model`` on ``batch`` (the loss functions live in `mtbench.losses`)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            outputs = model(batch["image"], tasks)
        if self.autocast:  # losses in float32, whatever precision the forward ran in
            outputs = {t: value.float() for t, value in outputs.items()}
        return {t: task_loss(self.by_name[t], outputs[t], batch[self.by_name[t].target]) for t in tasks}


# --- methods ------------------------------------------------------------------------------------------


class Method:
    """Base class of every method. Subclasses set ``config`` in ``__init__`` and implement the hooks.

    Hooks: ``setup(ctx)`` builds models and optimisers; ``step(ctx, step)`` performs one outer update
    and returns scalars to log; ``model_for(task)`` gives the network the meta-test starts from;
    ``lam()`` reports the current sparsity strength λ, if the method has one.
    """

    kind: ClassVar[str] = "mtl"

    def __init__(self, config: Any) -> None:
        self.config = config
        self.model: MultiTaskNet | None = None

    def setup(self, ctx: TrainContext) -> None:
        raise NotImplementedError

    def step(self, ctx: TrainContext, step: int) -> dict[str, float]:
        raise NotImplementedError

    def model_for(self, task: TaskSpec, ctx: TrainContext) -> MultiTaskNet:
        assert self.model is not None, "setup() was not called"
        return self.model

    def lam(self) -> float | list[float] | None:
        return None

    @property
    def sparsity_axis(self) -> Axis:
        """The channel-group axis of this method's sparsity (``in`` unless its config says otherwise).

        Statistics, the meta-test masks and the run's sparsity record all read it, so an ``axis=out``
        run reports and keeps output-channel groups.
        """
        return getattr(self.config, "axis", "in")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()} if self.model is not None else {}


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
#: quick budget a checkpoint (the whole method pickled, written and fsynced) costs about 0.1 % of the
#: training time it protects (measured: ~0.01–0.03 s per write against ~9–30 s per 100 steps on one CPU core).
CHECKPOINT_EVERY = 100
#: Version of the checkpoint's layout; a file of another version is refused, never misread.
CHECKPOINT_FORMAT = 1


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
    """

    history: list[dict[str, Any]]
    seconds: float
    lam_start: Any
    lam_end: Any
    resumed_from: int = 0


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

    Raises:
        CheckpointError: the file cannot be read or unpickled, is of another format, or belongs to another
            configuration (the message names every differing field).
    """
    try:
        # weights_only=False: the file pickles the whole method object (models, optimisers, learn2learn
        # wrappers, method-specific state). It is our own file, written by `train` into the run's own
        # folder; it is never read from anywhere else. Unpickling imports the method's dependencies, and
        # some print a banner on import (learn2learn's gym): kept quiet, as `mtbench.meta` imports it.
        with quiet():
            state = torch.load(path, weights_only=False)
    except Exception as error:  # truncated by a full disk, a plugin class that no longer exists, …
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
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


class _CheckpointPickler(pickle.Pickler):
    """Pickles optimisers with every attribute.

    torch's ``Optimizer.__getstate__`` keeps only ``defaults``, ``state`` and ``param_groups``, so an
    optimiser subclass would come back without its own attributes (`ProximalAdam`'s ``prox_kind`` and
    ``bias_correction``). Its ``__setstate__`` takes the whole attribute dict as well.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.optim.Optimizer):
            return copyreg.__newobj__, (type(obj),), dict(obj.__dict__)
        return NotImplemented


_CHECKPOINT_PICKLE = types.ModuleType("mtbench_checkpoint_pickle")  # what torch.save's pickle_module needs
_CHECKPOINT_PICKLE.Pickler = _CheckpointPickler  # type: ignore[attr-defined]


def write_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Save ``state`` to ``path`` atomically: a reader (a resumed run) sees the old file or the new, never half."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer, pickle_module=_CHECKPOINT_PICKLE)
    atomic_write_bytes(path, buffer.getvalue())


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
    steps = ctx.budget.steps
    key = train_identity(method, ctx, identity) if checkpoint is not None else {}
    first, history, before = 0, [], 0.0
    if checkpoint is not None:
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):  # left by a kill during a write
            stale.unlink(missing_ok=True)
        if not resume:
            checkpoint.unlink(missing_ok=True)
    if checkpoint is not None and checkpoint.is_file():
        state = read_checkpoint(checkpoint, key)
        # The caller keeps using its own `method` object: it takes over the restored object's attribute
        # dict (shared, not copied), so bound methods pickled with it (e.g. ProximalAdam's `lam` callable)
        # see every later update of those attributes too.
        method.__dict__ = state["method"].__dict__
        first, history, before, lam_start = state["next_step"], state["history"], state["seconds"], state["lam_start"]
        _set_rng_states(state["rng"])
        if notice:
            done = "; training was complete, the meta-test follows" if first >= steps else ""
            notice(f"resuming from step {first} of {steps} (checkpoint {checkpoint}{done})")
        if progress and first:
            progress(first, steps, history[-1] if history else {})
    else:
        method.setup(ctx)
        lam_start = method.lam()
    start = time.perf_counter()
    for step in range(first, steps):
        logged = method.step(ctx, step)
        if step % ctx.budget.log_every == 0 or step == steps - 1:
            entry = {
                "step": step,
                **{k: float(v) for k, v in logged.items()},
                "group_sparsity": _mean_group_sparsity(method, ctx),
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
                    "method": method,
                },
            )
        if progress:
            progress(done, steps, history[-1] if history else {})
    return TrainOutcome(history, before + time.perf_counter() - start, lam_start, method.lam(), first)


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


def finetune(
    model: MultiTaskNet, task: TaskSpec, data: TensorSet, ctx: TrainContext, seed: int, axis: Axis = "in"
) -> MultiTaskNet:
    """Fine-tune backbone + ``task``'s head on ``data``; groups (along ``axis``) that are zero stay exactly zero."""
    model.train()
    weights = [w for _, w in shared_conv_weights(model)]
    masks = zero_group_masks(weights, axis)
    optimizer = ctx.make_optimizer(model.parameters(), lr=ctx.budget.finetune_lr)
    single = TrainContext(ctx.budget, [task], data, seed, ctx.device, ctx.channels_last, ctx.autocast)
    for step in range(ctx.budget.finetune_steps):
        rng = np.random.default_rng([seed, step, 29])
        indices = rng.choice(len(data), size=min(ctx.budget.finetune_batch, len(data)), replace=False).tolist()
        loss = single.losses(model, single.batch(indices, [task.name]), [task.name])[task.name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _mask_gradients(weights, masks)
        optimizer.step()
        apply_masks(weights, masks)
    return model


@torch.no_grad()
def evaluate(model: MultiTaskNet, task: TaskSpec, data: TensorSet, ctx: TrainContext) -> dict[str, float]:
    """Metrics of ``task`` on ``data`` (accumulated over the whole split)."""
    model.eval()
    evaluator = evaluator_for(task)
    for first in range(0, len(data), ctx.budget.eval_batch):
        indices = range(first, min(first + ctx.budget.eval_batch, len(data)))
        batch = data.batch(indices, [task.target], ctx.device)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
            output = model(batch["image"], [task.name])[task.name]
        evaluator.update(output.float(), batch[task.target])
    return evaluator.compute()


@dataclass
class TaskResult:
    task: TaskSpec
    seen: bool
    metrics: dict[str, float]
    finetune_seconds: float
    eval_seconds: float


def meta_test(
    method: Method,
    ctx: TrainContext,
    tasks: Sequence[tuple[TaskSpec, bool]],
    load: Callable[[TaskSpec, str], TensorSet],
    progress: Callable[[str], None] | None = None,
) -> list[TaskResult]:
    """The common protocol: for each ``(task, seen)``, fine-tune from the trained backbone and evaluate.

    ``load(task, split)`` returns the task's data; it is called only here, after training, so a
    held-out task's targets are first read at meta-test time.
    """
    results = []
    for offset, (task, seen) in enumerate(tasks):
        if progress:
            progress(f"meta-test: fine-tuning {task.name} ({'seen' if seen else 'held out'})")
        model = copy.deepcopy(method.model_for(task, ctx))
        if not seen or task.name not in model.heads:
            head = model.make_head(task)
            init_seeded(head, ctx.seed * 1000 + 500 + offset)
            model.heads[task.name] = head.to(ctx.device)
        start = time.perf_counter()
        finetune(model, task, load(task, "train"), ctx, seed=ctx.seed * 1000 + 700 + offset, axis=method.sparsity_axis)
        tuned = time.perf_counter()
        metrics = evaluate(model, task, load(task, "test"), ctx)
        results.append(TaskResult(task, seen, metrics, tuned - start, time.perf_counter() - tuned))
    return results


__all__ = [
    "CHECKPOINT_EVERY",
    "Batch",
    "CheckpointError",
    "Method",
    "TaskResult",
    "TaskView",
    "TensorSet",
    "TrainContext",
    "TrainOutcome",
    "evaluate",
    "finetune",
    "meta_test",
    "read_checkpoint",
    "train",
    "train_identity",
    "write_checkpoint",
]
