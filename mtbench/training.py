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

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.episodes import Episode, EpisodeSampler, TaskView, meta_validation_split
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


@dataclass
class TrainOutcome:
    history: list[dict[str, Any]]
    seconds: float
    lam_start: Any
    lam_end: Any


def _mean_group_sparsity(method: Method, ctx: TrainContext) -> float:
    models = {id(m): m for m in (method.model_for(t, ctx) for t in ctx.seen)}
    return float(np.mean([sparsity_stats(m, method.sparsity_axis).group_sparsity for m in models.values()]))


def train(
    method: Method,
    ctx: TrainContext,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Run ``budget.steps`` outer updates of ``method``; record losses, λ and sparsity every ``log_every``."""
    method.setup(ctx)
    lam_start = method.lam()
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(ctx.budget.steps):
        logged = method.step(ctx, step)
        if step % ctx.budget.log_every == 0 or step == ctx.budget.steps - 1:
            entry = {
                "step": step,
                **{k: float(v) for k, v in logged.items()},
                "group_sparsity": _mean_group_sparsity(method, ctx),
            }
            lam = method.lam()
            if lam is not None:
                entry["lambda"] = lam
            history.append(entry)
        if progress:
            progress(step + 1, ctx.budget.steps, history[-1] if history else {})
    return TrainOutcome(history, time.perf_counter() - start, lam_start, method.lam())


# --- meta-test ----------------------------------------------------------------------------------------


def _mask_gradients(weights: list[Tensor], masks: list[Tensor]) -> None:
    for weight, mask in zip(weights, masks):
        if weight.grad is not None:
            weight.grad.mul_(mask)


@torch.no_grad()
def _apply_masks(weights: list[Tensor], masks: list[Tensor]) -> None:
    for weight, mask in zip(weights, masks):
        weight.mul_(mask)


def finetune(
    model: MultiTaskNet, task: TaskSpec, data: TensorSet, ctx: TrainContext, seed: int, axis: Axis = "in"
) -> MultiTaskNet:
    """Fine-tune backbone + ``task``'s head on ``data``; groups (along ``axis``) that are zero stay exactly zero."""
    model.train()
    weights = [w for _, w in shared_conv_weights(model)]
    masks = zero_group_masks(weights, axis)
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.budget.finetune_lr)
    single = TrainContext(ctx.budget, [task], data, seed, ctx.device, ctx.channels_last, ctx.autocast)
    for step in range(ctx.budget.finetune_steps):
        rng = np.random.default_rng([seed, step, 29])
        indices = rng.choice(len(data), size=min(ctx.budget.finetune_batch, len(data)), replace=False).tolist()
        loss = single.losses(model, single.batch(indices, [task.name]), [task.name])[task.name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _mask_gradients(weights, masks)
        optimizer.step()
        _apply_masks(weights, masks)  # Adam's momentum must not revive a pruned group
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
    "Batch",
    "Method",
    "TaskResult",
    "TaskView",
    "TensorSet",
    "TrainContext",
    "TrainOutcome",
    "evaluate",
    "finetune",
    "meta_test",
    "train",
]
