"""The evaluation protocol: how every method's trained network is scored, in the order a run applies it.

Every method passes through the same steps once training has ended (`score`):

1. **Recalibrate** (`recalibrate_batchnorm`): each trained network's BatchNorm running statistics are reset
   and recomputed as the plain average over ``bn_recalibration_batches`` fixed training batches (train mode,
   no gradient, images only: no label is read). Pruning, proximal steps and fine-tuning move the weights
   faster than the running averages (momentum 0.1) follow, so without this step sparse networks are scored
   with stale statistics. ``bn_recalibration_batches = 0`` skips it (the ablation); the count is part of the
   protocol, so it separates tables.
2. **Joint score** (`score_joint`): the one trained multi-task network as it is — for an episodic method the
   meta-learned network with its heads; for ``stl`` each task's own network — on every seen task, on the
   validation split and on the test split.
3. **Adapted score** (`adapt_and_score`, the meta-test): for every task, seen and held out, a copy of the
   trained network keeps its sparsity mask and the task's head (a fresh head for a held-out task), is
   fine-tuned on the task alone for the budget's ``finetune_steps``, recalibrated as in 1, and scored on the
   validation and test splits. It costs one backbone copy per task. The reference ``stl`` trains a held-out
   task's fresh network for the training budget's ``steps`` instead (`Method.held_out_steps`): the single-task
   network of that task, as for its seen tasks (150 steps from scratch scored no better than a trivial predictor).
4. **Trivial predictors** (`score_trivial`): per task, the prediction made without looking at an image —
   the per-pixel training mean (depth, normals), the per-pixel majority class (segmentation), the per-pixel
   edge frequency (edges), the majority class (attributes) — scored on the same splits. A task whose trained
   score does not beat it measures nothing.

The validation split is carved from the training split before training and touched by no training signal;
choices (a "best" λ, a checkpoint) are read off it. The test split is read here, once per score.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtbench.errors import ConfigError
from mtbench.metrics import Evaluator, evaluator_for
from mtbench.models import MultiTaskNet, init_seeded
from mtbench.sparsity import Axis, shared_conv_weights, zero_group_masks
from mtbench.specs import TaskSpec
from mtbench.training import (
    Method,
    TensorSet,
    TrainContext,
    _bounded,
    _mask_gradients,
    _single_request,
    apply_masks,
    eval_chunk,
    finetune_indices,
)

#: the roles a score is computed on: validation (for choices) and test (read once, reported)
SCORED_SPLITS = ("val", "test")

Load = Callable[[TaskSpec, str], TensorSet]


# --- splits ------------------------------------------------------------------------------------------------

#: the validation samples are drawn with this salt and the split's size, never with a run's seed
VALIDATION_SALT = 53


def carve_validation(total: int, samples: int, max_train: int | None = None) -> tuple[list[int], list[int]]:
    """(training indices, validation indices) of a training split of ``total`` samples.

    ``samples`` fixed samples (the same for every seed and method) are held out for validation; the others, in
    their order and capped at ``max_train``, are trained on. Raises `ConfigError` when nothing would be left.
    """
    if samples < 0 or samples >= total:
        raise ConfigError(
            f"cannot hold {samples} validation samples out of a training split of {total}",
            expected="0 <= validation_samples < the training split's size",
            found=f"validation_samples = {samples}, training split = {total} samples",
            fix="use a larger data set (synthetic: a larger --n) or a budget with fewer validation_samples",
        )
    held = np.sort(np.random.default_rng([VALIDATION_SALT, total]).permutation(total)[:samples])
    keep = np.setdiff1d(np.arange(total), held)
    if max_train is not None:
        keep = keep[:max_train]
    return keep.tolist(), held.tolist()


@dataclass(frozen=True)
class IndexedRead:
    """``read(index, keys)`` of a subset of a split: index ``i`` reads the split's sample ``indices[i]``."""

    read: Callable[..., dict[str, np.ndarray]]
    indices: tuple[int, ...]

    def __call__(self, index: int, keys: Sequence[str], **options: object) -> dict[str, np.ndarray]:
        return self.read(self.indices[index], keys, **options)


@dataclass(frozen=True)
class RoleRead:
    """``read(role, index, keys)`` over the roles ``train``/``val``/``test``, each a (split, indices) of a reader's
    ``read(split, index, keys)``: what `~mtbench.training.MetaTestData` reads through."""

    read: Callable[..., dict[str, np.ndarray]]
    roles: Mapping[str, tuple[str, tuple[int, ...]]]

    def __call__(self, role: str, index: int, keys: Sequence[str], **options: object) -> dict[str, np.ndarray]:
        split, indices = self.roles[role]
        return self.read(split, indices[index], keys, **options)

    def splits(self) -> dict[str, tuple[str, int]]:
        """``{role: (role, samples)}``: the ``splits`` argument of `MetaTestData` reading through this object."""
        return {role: (role, len(indices)) for role, (_, indices) in self.roles.items()}


# --- 1. BatchNorm recalibration ----------------------------------------------------------------------------


def recalibration_indices(seed: int, size: int, batch: int, count: int) -> list[list[int]]:
    """The ``count`` training batches the statistics are averaged over: fixed by (seed, size), never by method."""
    rng = np.random.default_rng([seed, 41])
    return [rng.choice(size, size=min(batch, size), replace=False).tolist() for _ in range(count)]


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    ]


@dataclass(frozen=True)
class Recalibration:
    """What one recalibration changed: per BatchNorm layer, recomputed over stale running variance (mean over
    channels); ``batches`` 0 when it was skipped."""

    batches: int
    variance_ratio: Mapping[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> tuple[str, float] | None:
        """The layer whose running variance was furthest from the recomputed one (by |log ratio|)."""
        if not self.variance_ratio:
            return None
        name = max(self.variance_ratio, key=lambda k: abs(np.log(max(self.variance_ratio[k], 1e-30))))
        return name, self.variance_ratio[name]


@torch.no_grad()
def recalibrate_batchnorm(
    model: MultiTaskNet,
    tasks: Sequence[str],
    data: TensorSet,
    ctx: TrainContext,
    batches: int | None = None,
    batch_size: int | None = None,
) -> Recalibration:
    """Recompute ``model``'s BatchNorm running statistics over ``batches`` training batches of ``batch_size``
    (default: the budget's ``bn_recalibration_batches`` and ``batch_size``), in place.

    The statistics are reset and accumulated as a plain average (``momentum=None``) of the batches' own
    statistics while the network runs in train mode on ``tasks``' heads (every BatchNorm those heads and the
    backbone hold); no gradient, no label. The network is left in eval mode. ``batches=0`` does nothing.
    """
    batches = ctx.budget.bn_recalibration_batches if batches is None else batches
    batch_size = ctx.budget.batch_size if batch_size is None else batch_size
    norms = _batchnorms(model)
    if batches <= 0 or not norms:
        return Recalibration(0)
    before = {name: module.running_var.detach().clone() for name, module in norms}
    momenta = {name: module.momentum for name, module in norms}
    for _, module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the batches
    requests = recalibration_indices(ctx.seed, len(data), batch_size, batches)
    ahead = functools.partial(_bounded, lambda position: [requests[position]], batches)
    model.train()
    try:
        for position in range(batches):
            (batch,) = data.fetch(ahead(position), [], ctx.device, ahead=ahead, position=position, stream="bn")
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
                model(ctx._layout(batch)["image"], list(tasks))
    finally:
        for name, module in norms:
            module.momentum = momenta[name]
        model.eval()
    ratio = {
        name: float((module.running_var / before[name].clamp_min(1e-12)).mean())
        for name, module in norms
        if int(module.num_batches_tracked) > 0
    }
    return Recalibration(batches, ratio)


# --- evaluation ---------------------------------------------------------------------------------------------


def _chunks(data: TensorSet, target: str, ctx: TrainContext) -> Iterator[dict[str, Tensor]]:
    ahead = functools.partial(eval_chunk, len(data), ctx.budget.eval_batch)
    position = 0
    while (requests := ahead(position)) is not None:
        (batch,) = data.fetch(requests, [target], ctx.device, ahead=ahead, position=position, stream="eval")
        position += 1
        yield batch


#: test images per bootstrap unit, and resamples: the interval over test images of `evaluate_blocks`
BOOTSTRAP_BLOCK = 10
BOOTSTRAP_RESAMPLES = 200


@torch.no_grad()
def evaluate_blocks(model: nn.Module, task: TaskSpec, data: TensorSet, ctx: TrainContext) -> list[Evaluator]:
    """One evaluator per `BOOTSTRAP_BLOCK` consecutive samples of ``data`` (the network in eval mode)."""
    model.eval()
    blocks = []
    for batch in _chunks(data, task.target, ctx):
        images = ctx._layout(batch)["image"]
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
            output = model(images, [task.name])[task.name].float()
        target = batch[task.target]
        for first in range(0, len(target), BOOTSTRAP_BLOCK):
            block = evaluator_for(task)
            block.update(output[first : first + BOOTSTRAP_BLOCK], target[first : first + BOOTSTRAP_BLOCK])
            blocks.append(block)
    return blocks


def merged(task: TaskSpec, blocks: Sequence[Evaluator]) -> Evaluator:
    """A fresh evaluator holding the statistics of ``blocks`` (a block listed twice counts twice)."""
    total = evaluator_for(task)
    for block in blocks:
        total.merge(block)
    return total


def bootstrap_interval(
    task: TaskSpec, blocks: Sequence[Evaluator], seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, tuple[float, float]]:
    """Percentile 95 % interval of each metric over test images: ``resamples`` draws of the blocks with
    replacement (the blocks hold consecutive images of a test split whose images are independent draws)."""
    if len(blocks) < 2:  # every resample is the whole split: the interval is the value itself
        values = merged(task, blocks).compute()
        return {name: (value, value) for name, value in values.items()}
    rng = np.random.default_rng([seed, 61])
    draws = [
        merged(task, [blocks[i] for i in rng.integers(0, len(blocks), len(blocks))]).compute() for _ in range(resamples)
    ]
    return {
        name: (float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5)))
        for name in draws[0]
        for values in [[d[name] for d in draws]]
    }


def evaluate(model: nn.Module, task: TaskSpec, data: TensorSet, ctx: TrainContext) -> dict[str, float]:
    """Metrics of ``task`` on ``data`` (accumulated over the whole split), the network in eval mode."""
    return merged(task, evaluate_blocks(model, task, data, ctx)).compute()


@dataclass
class Scores:
    """One task's metrics under one score (joint, adapted or trivial), per split role; with timings."""

    task: TaskSpec
    seen: bool
    metrics: dict[str, dict[str, float]]  #: role (``val``/``test``) -> metric -> value
    finetune_seconds: float = 0.0
    eval_seconds: float = 0.0
    recalibration: Recalibration | None = None
    #: metric -> 95 % bootstrap interval over the test images (`bootstrap_interval`)
    test_interval: dict[str, tuple[float, float]] = field(default_factory=dict)


def _score(model: nn.Module, task: TaskSpec, seen: bool, load: Load, ctx: TrainContext, **timings: Any) -> Scores:
    """``task`` scored on the validation and test splits, with the bootstrap interval over test images."""
    metrics, interval = {}, {}
    for role in SCORED_SPLITS:
        blocks = evaluate_blocks(model, task, load(task, role), ctx)
        metrics[role] = merged(task, blocks).compute()
        if role == "test":
            interval = bootstrap_interval(task, blocks, ctx.seed)
    return Scores(task, seen, metrics, test_interval=interval, **timings)


# --- 2. joint score -----------------------------------------------------------------------------------------


def trained_networks(method: Method, ctx: TrainContext) -> list[tuple[MultiTaskNet, list[TaskSpec]]]:
    """Each distinct trained network of ``method`` with the seen tasks it serves (one for a multi-task method,
    one per task for ``stl``)."""
    networks: dict[int, tuple[MultiTaskNet, list[TaskSpec]]] = {}
    for task in ctx.seen:
        model = method.model_for(task, ctx)
        networks.setdefault(id(model), (model, []))[1].append(task)
    return list(networks.values())


def recalibrate_trained(method: Method, ctx: TrainContext, load: Load) -> dict[str, Recalibration]:
    """Recalibrate every trained network of ``method`` in place (step 1), on the training images; keyed by the
    tasks each serves (``semseg+normal+edge``)."""
    done = {}
    for model, tasks in trained_networks(method, ctx):
        names = [t.name for t in tasks]
        done["+".join(names)] = recalibrate_batchnorm(model, names, load(tasks[0], "train"), ctx)
    return done


def score_joint(method: Method, task: TaskSpec, ctx: TrainContext, load: Load) -> Scores:
    """A seen task scored on the trained network that serves it, as it is (after `recalibrate_trained`)."""
    start = time.perf_counter()
    scores = _score(method.model_for(task, ctx), task, True, load, ctx)
    return dataclasses.replace(scores, eval_seconds=time.perf_counter() - start)


# --- 3. adapted score (the meta-test) ------------------------------------------------------------------------


def finetune(
    model: MultiTaskNet,
    task: TaskSpec,
    data: TensorSet,
    ctx: TrainContext,
    seed: int,
    axis: Axis = "in",
    steps: int | None = None,
) -> MultiTaskNet:
    """Fine-tune backbone + ``task``'s head on ``data`` for ``steps`` (default: the budget's ``finetune_steps``);
    groups (along ``axis``) that are zero stay exactly zero."""
    model.train()
    weights = [w for _, w in shared_conv_weights(model)]
    masks = zero_group_masks(weights, axis)
    optimizer = ctx.make_optimizer(model.parameters(), lr=ctx.budget.finetune_lr)
    single = dataclasses.replace(ctx, seen=[task], train=data, seed=seed, compile=False)
    steps = ctx.budget.finetune_steps if steps is None else steps
    each = functools.partial(
        _single_request, finetune_indices, seed=seed, size=len(data), batch=ctx.budget.finetune_batch
    )
    ahead = functools.partial(_bounded, each, steps)  # nothing is read ahead past the last step
    for step in range(steps):
        (batch,) = single.fetch(ahead(step), [task.name], ahead, step, "finetune")
        loss = single.losses(model, batch, [task.name])[task.name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _mask_gradients(weights, masks)
        optimizer.step()
        apply_masks(weights, masks)
    return model


def adapt_and_score(method: Method, task: TaskSpec, seen: bool, offset: int, ctx: TrainContext, load: Load) -> Scores:
    """The meta-test of one task: fine-tune a copy of the trained network on it, recalibrate, score.

    ``offset``: the task's place in the run's task order (its fresh head and fine-tuning seeds derive from it).
    """
    model = copy.deepcopy(method.model_for(task, ctx))
    if not seen or task.name not in model.heads:
        head = model.make_head(task)
        init_seeded(head, ctx.seed * 1000 + 500 + offset)
        head = head.to(ctx.device)
        model.heads[task.name] = head.to(memory_format=torch.channels_last) if ctx.channels_last else head
    start = time.perf_counter()
    train = load(task, "train")
    steps = ctx.budget.finetune_steps if seen else method.held_out_steps(ctx)
    finetune(model, task, train, ctx, seed=ctx.seed * 1000 + 700 + offset, axis=method.sparsity_axis, steps=steps)
    recalibration = recalibrate_batchnorm(model, [task.name], train, ctx)
    tuned = time.perf_counter()
    scores = _score(model, task, seen, load, ctx, finetune_seconds=tuned - start, recalibration=recalibration)
    return dataclasses.replace(scores, eval_seconds=time.perf_counter() - tuned)


# --- 4. trivial predictors -----------------------------------------------------------------------------------


def _per_pixel_mean(targets: Iterator[Tensor], invalid: Callable[[Tensor], Tensor]) -> Tensor:
    """Per-pixel mean over the valid values (a pixel never valid takes the mean over all valid values)."""
    total = count = None
    for target in targets:
        target = target.double()
        valid = (~invalid(target)).double()
        batch_sum, batch_count = (target * valid).sum(0), valid.sum(0)
        total = batch_sum if total is None else total + batch_sum
        count = batch_count if count is None else count + batch_count
    assert total is not None and count is not None
    overall = total.sum(dim=(-2, -1), keepdim=True) / count.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    return torch.where(count > 0, total / count.clamp_min(1), overall).float()


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def trivial_output(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor | None:
    """The trivial predictor's output for one image (the shape of the head's output, without the batch), from
    the training targets, as the task's kind computes it (`TaskKind.trivial`); None for a kind that has none."""
    return None if task.kind.trivial is None else task.kind.trivial(task, targets)


# --- the trivial predictors of the built-in kinds (named by `mtbench_tasks.kinds`) ---------------------------


def trivial_depth(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor:
    """The per-pixel mean depth over valid pixels (depth > 0)."""
    return _per_pixel_mean(targets, lambda t: t <= 0)


def trivial_normals(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor:
    """The per-pixel mean normal over valid pixels (not all-zero)."""
    return _per_pixel_mean(targets, lambda t: (t == 0).all(dim=1, keepdim=True).expand_as(t))


def trivial_edges(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor:
    """The logit of each pixel's edge frequency."""
    return _logit(_per_pixel_mean(targets, lambda t: torch.zeros_like(t, dtype=torch.bool)))


def trivial_segmentation(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor:
    """One-hot of each pixel's majority class over labelled pixels."""
    counts = None
    for target in targets:  # (B, H, W), -1 = ignore
        one_hot = torch.zeros((task.out_channels, *target.shape[-2:]), dtype=torch.float64)
        labelled = target >= 0
        for c in range(task.out_channels):
            one_hot[c] = ((target == c) & labelled).sum(0)
        counts = one_hot if counts is None else counts + one_hot
    assert counts is not None
    majority = counts.argmax(0)
    return torch.nn.functional.one_hot(majority, task.out_channels).permute(2, 0, 1).float()


def trivial_binary(task: TaskSpec, targets: Iterator[Tensor]) -> Tensor:
    """The majority class, as a logit of ±1."""
    positives = total = 0.0
    for target in targets:
        positives += float((target.double() > 0.5).sum())
        total += target.numel()
    return torch.tensor([1.0 if positives * 2 > total else -1.0])


def score_trivial(task: TaskSpec, seen: bool, ctx: TrainContext, load: Load) -> Scores | None:
    """The task's trivial predictor, built from its training targets and scored on validation and test (None:
    its kind has none)."""
    start = time.perf_counter()
    output = trivial_output(task, (b[task.target].cpu() for b in _chunks(load(task, "train"), task.target, ctx)))
    if output is None:
        return None
    metrics = {}
    for role in SCORED_SPLITS:
        evaluator = evaluator_for(task)
        for batch in _chunks(load(task, role), task.target, ctx):
            target = batch[task.target]
            evaluator.update(output.to(target.device).expand(len(target), *output.shape), target)
        metrics[role] = evaluator.compute()
    return Scores(task, seen, metrics, eval_seconds=time.perf_counter() - start)


# --- the whole protocol ---------------------------------------------------------------------------------------


@dataclass
class TaskScores:
    """Everything the protocol measured on one task."""

    task: TaskSpec
    seen: bool
    adapted: Scores
    joint: Scores | None = None  #: seen tasks only
    trivial: Scores | None = None  #: None where the task's kind has no trivial predictor


@dataclass
class Scored:
    """The protocol's outcome: per task scores, and the recalibration of the trained network(s)."""

    tasks: list[TaskScores]
    recalibration: dict[str, Recalibration]
    seconds: float


def score(
    method: Method,
    ctx: TrainContext,
    tasks: Sequence[tuple[TaskSpec, bool]],
    load: Load,
    progress: Callable[[str], None] | None = None,
) -> Scored:
    """Apply the whole protocol (module docstring) to a trained ``method``: recalibrate its network(s), then per
    task in ``tasks`` (``(task, seen)``) the joint score (seen tasks), the trivial predictor, the adapted score.

    ``load(task, role)`` gives the task's data of role ``train``, ``val`` or ``test``; it is called only here,
    after training, task after task (a held-out task's targets are first read here).
    """
    start = time.perf_counter()
    recalibration = recalibrate_trained(method, ctx, load)
    out = []
    for offset, (task, seen) in enumerate(tasks):
        if progress:
            progress(f"scoring {task.name} ({'seen' if seen else 'held out'})")
        joint = score_joint(method, task, ctx, load) if seen else None
        trivial = score_trivial(task, seen, ctx, load)
        adapted = adapt_and_score(method, task, seen, offset, ctx, load)
        out.append(TaskScores(task, seen, adapted, joint, trivial))
    return Scored(out, recalibration, time.perf_counter() - start)


__all__ = [
    "SCORED_SPLITS",
    "IndexedRead",
    "RoleRead",
    "carve_validation",
    "Recalibration",
    "Scored",
    "Scores",
    "TaskScores",
    "BOOTSTRAP_BLOCK",
    "adapt_and_score",
    "bootstrap_interval",
    "evaluate_blocks",
    "merged",
    "evaluate",
    "finetune",
    "recalibrate_batchnorm",
    "recalibrate_trained",
    "recalibration_indices",
    "score",
    "score_joint",
    "score_trivial",
    "trained_networks",
    "trivial_binary",
    "trivial_depth",
    "trivial_edges",
    "trivial_normals",
    "trivial_output",
    "trivial_segmentation",
]
