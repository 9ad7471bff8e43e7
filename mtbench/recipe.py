"""The run as a recipe: short named steps from a checked plan (`mtbench.runner.plan`) to a written run folder.

`run` reads as the list of steps: open the data, carve the splits, load the training data, build the training
context, train, meta-test, account from the live model, assemble the result, write the run folder. Each step is
a function of its own, usable alone (``mtbench bench train`` opens the data and builds the context the same way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbench import catalog, protocol
from mtbench.allocator import tune_malloc
from mtbench.callbacks import Notice, ProgressFactory
from mtbench.data.io import atomic_write_json
from mtbench.data.reader import LAYOUTS, Reader
from mtbench.data.resolve import resolve_data, split_name
from mtbench.environment import apply_determinism, environment
from mtbench.episodes import TaskView
from mtbench.errors import OutputError
from mtbench.inference import account, run_model
from mtbench.methods import methods
from mtbench.plots import lambda_chart, sparsity_chart
from mtbench.preflight import check_targets
from mtbench.protocol import IndexedRead, RoleRead, carve_validation
from mtbench.request import RUNS_DIR, RunPlan, plain_config
from mtbench.result import (
    REFERENCE_METHOD,
    Accounting,
    DatasetRecord,
    DeltaM,
    Evaluation,
    HistoryRow,
    LambdaTrace,
    LayerSparsity,
    MethodRecord,
    Metric,
    RunResult,
    Sparsity,
    TaskOutcome,
    Timings,
    TrainingCost,
)
from mtbench.scoring import ScoringError, run_delta_m
from mtbench.sparsity import sparsity_stats
from mtbench.specs import DatasetSpec, TaskSpec
from mtbench.streaming import DataPath, StreamingMetaTestData, StreamingSet, choose_data_path, sample_bytes
from mtbench.training import MetaTestData, TensorSet, TrainContext, TrainOutcome, train, train_identity, training_flops

#: The training checkpoint in a run folder (removed once result.json is written). Without ``--out`` it lives
#: in ``runs/.resume/<method>-seed<seed>-<configuration digest>/`` (the run id is only made at the end), so
#: a rerun of the same configuration without ``--out`` resumes too.
RESUME_FILE = "resume.pt"
#: share of the GPU's memory a compact training set may take to be moved onto the GPU once (CUDA runs)
RESIDENT_SHARE = 0.25


@dataclass(frozen=True)
class Reference:
    """The stl reference a run's Δm is measured against, and what obtaining it cost."""

    result: RunResult
    seconds: float
    trained: bool


@dataclass(frozen=True)
class Executed:
    """A finished run: its result, its run folder and (once recorded) its file in the results store."""

    result: RunResult
    run_dir: Path
    stored: Path | None = None

    @property
    def result_file(self) -> Path:
        return self.run_dir / "result.json"


@dataclass(frozen=True)
class OpenedData:
    """A plan's data set opened for reading, with its identity (fingerprint) computed once."""

    spec: DatasetSpec
    reader: Reader
    record: DatasetRecord


@dataclass(frozen=True)
class Splits:
    """Which samples play which role (`mtbench.protocol`), and how the data are held (memory or stream)."""

    train_split: str
    roles: RoleRead
    trained_on: Sequence[int]
    validation: Sequence[int]
    tested_on: Sequence[int]
    path: DataPath


def _bars(progress: ProgressFactory | None) -> ProgressFactory:
    return progress or (lambda _description: nullcontext(lambda *args, **kwargs: None))


# --- the steps --------------------------------------------------------------------------------------------


def open_data(the_plan: RunPlan, notice: Notice | None = None) -> OpenedData:
    """The plan's data set opened for reading (a synthetic stand-in is generated here, once)."""
    spec, reader = resolve_data(the_plan.dataset.name, the_plan.request.data_root, the_plan.budget, notice)
    check_targets(reader, (*the_plan.seen, *the_plan.held_out))
    identity = reader.identity()
    record = DatasetRecord(
        name=spec.name,
        synthetic=identity.synthetic,
        identity=identity.to_dict(),
        family=spec.family,
        train_split=spec.train_split,
        test_split=spec.test_split,
        layout_source=LAYOUTS.source(reader.layout) if reader.layout in LAYOUTS else None,
    )
    return OpenedData(spec, reader, record)


def carve_splits(the_plan: RunPlan, data: OpenedData, view: TaskView) -> Splits:
    """Training, validation and test samples, and whether they are held in memory or streamed."""
    budget, request, reader = the_plan.budget, the_plan.request, data.reader
    train_split = split_name(reader, data.spec.train_split)
    test_split = split_name(reader, data.spec.test_split)
    trained_on, validation = carve_validation(
        reader.num_samples(train_split), budget.validation_samples, budget.max_train_samples
    )
    tests = reader.num_samples(test_split)
    tested_on = range(tests if budget.max_test_samples is None else min(tests, budget.max_test_samples))
    roles = RoleRead(
        reader.read,
        {
            "train": (train_split, tuple(trained_on)),
            "val": (train_split, tuple(validation)),
            "test": (test_split, tuple(tested_on)),
        },
    )
    path = choose_data_path(
        request.data_mode,
        sample_bytes(view.read, [t.target for t in the_plan.seen], budget.resolution),
        len(trained_on) + len(validation) + len(tested_on),
        the_plan.device,
        budget_gib=request.memory_budget_gib,
        workers=request.loader_workers,
    )
    return Splits(train_split, roles, trained_on, validation, tested_on, path)


def load_training_data(
    the_plan: RunPlan, view: TaskView, splits: Splits, notice: Notice | None = None
) -> TensorSet | StreamingSet:
    """The seen tasks' training samples: compact tensors in memory (on the GPU when they fit), or a stream."""
    budget, on_cuda = the_plan.budget, the_plan.device.type == "cuda"
    targets = [t.target for t in the_plan.seen]
    read_train, count = IndexedRead(view.read, tuple(splits.trained_on)), len(splits.trained_on)
    if splits.path.mode == "stream":
        if notice and the_plan.request.data_mode == "auto":
            notice(f"streaming the data: {splits.path.reason}")
        return StreamingSet(read_train, count, targets, budget.resolution, workers=splits.path.workers,
                            pin_memory=on_cuda)
    train_data = TensorSet.load(read_train, count, targets, budget.resolution)
    gpu_memory = torch.cuda.get_device_properties(the_plan.device).total_memory if on_cuda else 0
    if train_data.nbytes < RESIDENT_SHARE * gpu_memory:
        train_data = train_data.to(the_plan.device)  # uint8 images on the GPU: batches gathered there
    return train_data


def training_context(the_plan: RunPlan, train_data: TensorSet | StreamingSet, deterministic: bool) -> TrainContext:
    """What every method trains with: budget, seen tasks, data, seed, device and kernel settings."""
    on_cuda = the_plan.device.type == "cuda"
    return TrainContext(
        the_plan.budget, list(the_plan.seen), train_data, the_plan.request.seed, the_plan.device,
        channels_last=on_cuda, autocast=on_cuda, deterministic=deterministic, compile=the_plan.request.compile,
    )


def run_identity(the_plan: RunPlan, source: str, dataset: DatasetRecord) -> dict[str, Any]:
    """What a training checkpoint must match to be resumed (method, its source, data set, protocol)."""
    return {
        "method_name": the_plan.method.name,
        "method_source": source,
        "dataset": {"name": dataset.name, "synthetic": dataset.synthetic, "identity": dict(dataset.identity)},
        "protocol": the_plan.protocol.to_json(),
    }


def checkpoint_file(the_plan: RunPlan, method: Any, ctx: TrainContext, identity: dict[str, Any]) -> Path:
    """Where training checkpoints go: ``<out>/resume.pt``, else a folder keyed by the full training identity."""
    if the_plan.request.out is not None:
        return the_plan.request.out / RESUME_FILE
    digest = hashlib.sha256(json.dumps(train_identity(method, ctx, identity), sort_keys=True).encode()).hexdigest()
    return RUNS_DIR / ".resume" / f"{the_plan.method.name}-seed{the_plan.request.seed}-{digest[:16]}" / RESUME_FILE


def train_method(
    the_plan: RunPlan, method: Any, ctx: TrainContext, identity: dict[str, Any], checkpoint: Path,
    notice: Notice | None = None, progress: ProgressFactory | None = None,
) -> TrainOutcome:
    """(Meta-)train the method on the seen tasks, checkpointing and resuming as the request says."""
    what = "meta-training" if method.kind == "meta" else "training"
    with _bars(progress)(f"{the_plan.method.name}: {what} ({', '.join(t.name for t in the_plan.seen)})") as update:
        return train(
            method, ctx, progress=update, checkpoint=checkpoint, every=the_plan.request.checkpoint_every,
            identity=identity, resume=the_plan.request.resume, notice=notice,
        )


def meta_test(
    the_plan: RunPlan, method: Any, ctx: TrainContext, train_data: TensorSet | StreamingSet, splits: Splits,
    progress: ProgressFactory | None = None,
) -> tuple[protocol.Scored, dict[str, Any] | None]:
    """Recalibrate, score the joint network, fine-tune and score every task (`mtbench.protocol.score`).

    Returns the scores and, for streamed data, the loaders' prefetch statistics of the meta-test.
    One image tensor per split is read (the training set's is reused when in memory); targets are loaded per
    task and released when the task is done.
    """
    budget, on_cuda = the_plan.budget, the_plan.device.type == "cuda"
    data: MetaTestData | StreamingMetaTestData = (
        StreamingMetaTestData(splits.roles, splits.roles.splits(), budget.resolution, workers=splits.path.workers,
                              pin_memory=on_cuda)
        if isinstance(train_data, StreamingSet)
        else MetaTestData(
            splits.roles, splits.roles.splits(), budget.resolution, given={"train": train_data},
            together={"train": [t.target for t in the_plan.held_out]},
        )
    )
    current: list[str] = []

    def load(task: TaskSpec, split: str) -> TensorSet:
        if current and current[0] != task.target:
            data.done(current.pop())  # the previous task is finished: its targets go
        current[:] = [task.target]
        return data.get(split, task.target)

    order = [(t, True) for t in the_plan.seen] + [(t, False) for t in the_plan.held_out]
    with _bars(progress)("scoring: recalibrate, score joint, fine-tune and score every task") as update:
        done = [0]

        def step(_message: str) -> None:
            update(done[0], len(order), {})
            done[0] += 1

        scored = protocol.score(method, ctx, order, load, progress=step)
        data.close()
        update(len(order), len(order), {})
    return scored, dict(data.stats) if isinstance(data, StreamingMetaTestData) else None


def account_live(method: Any, result: RunResult, notice: Notice | None = None) -> Accounting | None:
    """Parameters and FLOPs of the trained network(s) in memory, dense against compact (no latency: that is a
    benchmark, ``mtbench bench inference``)."""
    try:
        return account(run_model(result, method.state_dict()))
    except Exception as error:  # the run itself is complete; say why its accounting is missing
        if notice:
            notice(f"parameter/FLOP accounting failed ({type(error).__name__}: {error}); "
                   "`mtbench bench inference` retries")
        return None


def _metrics(task: TaskSpec, values: dict[str, float]) -> dict[str, Metric]:
    return {m.name: Metric(float(values[m.name]), m.higher_is_better, m.in_delta_m) for m in task.metrics}


def task_outcomes(tested: Sequence[protocol.TaskScores]) -> dict[str, TaskOutcome]:
    """Every task's scores as stored: adapted and joint on test, both on validation, the trivial predictor's; and
    where the task's spec came from (a plugin's task is named by its file)."""
    registry = catalog.tasks()
    return {
        r.task.name: TaskOutcome(
            source=registry.source(r.task.key) if r.task.key in registry else None,
            seen=r.seen,
            version=r.task.version,
            title=r.task.title,
            metrics=_metrics(r.task, r.adapted.metrics["test"]),
            finetune_seconds=r.adapted.finetune_seconds,
            eval_seconds=r.adapted.eval_seconds,
            joint=_metrics(r.task, r.joint.metrics["test"]) if r.joint is not None else None,
            validation={
                "adapted": dict(r.adapted.metrics["val"]),
                **({"joint": dict(r.joint.metrics["val"])} if r.joint is not None else {}),
            },
            trivial=r.trivial.metrics if r.trivial is not None else None,
            test_interval={
                score: {metric: list(bounds) for metric, bounds in scores.test_interval.items()}
                for score, scores in (("adapted", r.adapted), ("joint", r.joint))
                if scores is not None
            },
        )
        for r in tested
    }


@dataclass(frozen=True)
class Finished:
    """What the training and meta-test steps leave for the result."""

    source: str
    dataset: DatasetRecord
    outcome: TrainOutcome
    scored: protocol.Scored
    splits: Splits
    sparsity: Sparsity
    input_size: tuple[int, ...]
    data_path: dict[str, Any]
    seconds: float  #: wall time of this session of the run so far


def assemble_result(the_plan: RunPlan, done: Finished, reference: Reference | None) -> RunResult:
    """The `RunResult` of a finished run, without Δm and accounting (`with_delta_m`, `account_live`)."""
    info, request, budget, splits = the_plan.method, the_plan.request, the_plan.budget, done.splits
    created = dt.datetime.now(dt.timezone.utc)
    unseen_tag = "+".join(t.name for t in the_plan.held_out) or "none"
    run_id = (f"{created:%Y%m%d-%H%M%S}-{done.dataset.name}-{info.name}-{budget.name}-unseen-{unseen_tag}-"
              f"seed{request.seed}-{uuid.uuid4().hex[:6]}")
    outcome, scored = done.outcome, done.scored
    counted, per_step, flops = training_flops(outcome.history, outcome.steps)
    history = tuple(map(HistoryRow.logged, outcome.history))
    return RunResult(
        run_id=run_id,
        created=created.isoformat(timespec="seconds"),
        method=MethodRecord(
            name=info.name, config=plain_config(the_plan.config), source=done.source, summary=info.summary,
            paper=info.paper, link=info.link, deviations=info.deviations, kind=getattr(info.method, "kind", "mtl"),
            family=info.family,
        ),
        dataset=done.dataset,
        protocol=the_plan.protocol,
        seed=request.seed,
        overrides=dict(request.overrides),
        environment=dataclasses.replace(environment(the_plan.device), data=done.data_path),
        tasks=task_outcomes(scored.tasks),
        evaluation=Evaluation(
            bn_recalibration_batches=budget.bn_recalibration_batches,
            splits={"train": len(splits.trained_on), "val": len(splits.validation), "test": len(splits.tested_on)},
            validation=f"{len(splits.validation)} fixed samples of the training split {splits.train_split!r}, "
            "never trained on",
            stale_variance={
                network: {"layer": worst[0], "ratio": worst[1]}
                for network, recalibration in scored.recalibration.items()
                if (worst := recalibration.worst) is not None
            },
            seconds=scored.seconds,
        ),
        training_cost=TrainingCost(
            steps=outcome.steps, counted_steps=counted, flops_per_step=per_step, flops=flops, seconds=outcome.seconds
        ),
        sparsity=done.sparsity,
        lam=LambdaTrace(
            start=outcome.lam_start,
            end=outcome.lam_end,
            trajectory=tuple((row.step, row.lam) for row in history if row.lam is not None),
        ),
        history=history,
        timings=Timings(
            train_seconds=outcome.seconds,
            meta_test_seconds=scored.seconds,
            # a resumed run's total counts its earlier sessions' training too, as train_seconds does
            total_seconds=done.seconds + outcome.earlier_seconds,
            reference_seconds=reference.seconds if reference else 0.0,
            reference_trained=bool(reference and reference.trained),
        ),
        input_size=(int(done.input_size[0]), int(done.input_size[1])),
    )


def with_delta_m(result: RunResult, reference: Reference | None, notice: Notice | None = None) -> RunResult:
    """``result`` with its Δm against the reference (an stl run is its own reference); unchanged without one."""
    if reference is None and result.method.name != REFERENCE_METHOD:
        return result
    try:
        delta = run_delta_m(result, reference.result if reference is not None else result)
    except ScoringError as error:  # e.g. a reference metric of exactly 0 after a tiny budget
        delta = DeltaM(unavailable=str(error))
        if notice:
            notice(f"Δm not computed: {error.problem}")
    return dataclasses.replace(result, delta_m=delta)


def write_run_folder(
    the_plan: RunPlan, method: Any, result: RunResult, layers: dict[str, Any], checkpoint: Path
) -> Path:
    """``checkpoint.pt``, ``result.json`` (written once), ``sparsity.png`` and ``lambda.png``; the training
    checkpoint is removed (the run is complete: nothing left to resume)."""
    out = the_plan.request.out or RUNS_DIR / result.run_id
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(method.state_dict(), out / "checkpoint.pt")
        atomic_write_json(out / "result.json", result.to_json())
        checkpoint.unlink(missing_ok=True)
        if the_plan.request.out is None:
            with contextlib.suppress(OSError):
                checkpoint.parent.rmdir()  # runs/.resume/<method>-seed<seed>-<digest>/, now empty
    except OSError as error:  # checked before training; a disk that filled up since still gets a short message
        raise OutputError(
            f"cannot write the run folder {out}", expected="a writable folder with free space", found=str(error)
        ) from None
    name, dataset, seed = the_plan.method.name, result.dataset.name, the_plan.request.seed
    group_pct = 100 * (result.sparsity.group_sparsity or 0.0) if result.sparsity else 0.0
    sparsity_chart(layers, out / "sparsity.png", title=f"{name} on {dataset}, seed {seed}: zeroed channel groups "
                   f"per shared conv ({group_pct:.1f} % overall)")
    lambda_chart(list(result.history), out / "lambda.png",
                 title=f"{name} on {dataset}, seed {seed}: λ and its meta-gradient")
    return out


def measured_sparsity(method: Any, the_plan: RunPlan, ctx: TrainContext) -> tuple[Sparsity, dict[str, Any]]:
    """The trained shared network's sparsity, typed for the result and as the per-layer chart reads it."""
    stats = sparsity_stats(method.model_for(the_plan.seen[0], ctx), method.sparsity_axis).to_dict()
    return Sparsity(
        group_sparsity=stats["group_sparsity"],
        param_sparsity=stats.get("param_sparsity"),
        axis=method.sparsity_axis,
        layers=tuple(LayerSparsity.from_json(layer) for layer in stats.get("layers") or ()),
        dead_layers=tuple(stats["dead_layers"]),
        dead_branches=tuple(stats["dead_branches"]),
    ), stats


# --- the recipe -------------------------------------------------------------------------------------------


def run(
    the_plan: RunPlan,
    *,
    notice: Notice | None = None,
    progress: ProgressFactory | None = None,
    reference: Reference | None = None,
    data: OpenedData | None = None,
) -> Executed:
    """Train on the seen tasks, meta-test every task, write the run folder; returns the result.

    The results store is written by `mtbench.runner.record`. ``reference``: Δm is measured against it;
    ``data``: the plan's data set already opened (`open_data`).
    """
    started = time.perf_counter()
    data = data or open_data(the_plan, notice)
    torch.manual_seed(the_plan.request.seed)  # after the reference: its training must not shift this run's RNG
    tune_malloc()  # before the data are loaded: see mtbench.allocator (the result's environment records it)
    deterministic = apply_determinism(
        the_plan.request.resolved_deterministic(the_plan.device), the_plan.device, compiling=the_plan.request.compile
    )
    view = TaskView(data.reader, split_name(data.reader, data.spec.train_split), the_plan.seen, the_plan.held_out)
    splits = carve_splits(the_plan, data, view)
    train_data = load_training_data(the_plan, view, splits, notice)
    ctx = training_context(the_plan, train_data, deterministic)
    method = the_plan.method.method(the_plan.config)
    source = methods(the_plan.request.plugins).source(the_plan.method.name)
    identity = run_identity(the_plan, source, data.record)
    checkpoint = checkpoint_file(the_plan, method, ctx, identity)
    outcome = train_method(the_plan, method, ctx, identity, checkpoint, notice, progress)
    data_path, input_size = _data_path(splits.path, train_data), train_data.image_size
    train_data.close()  # a streaming set's workers stop here; a set in memory stays for the meta-test
    scored, meta_test_prefetch = meta_test(the_plan, method, ctx, train_data, splits, progress)
    if meta_test_prefetch is not None and "prefetch" in data_path:
        data_path["prefetch"] = {n: data_path["prefetch"][n] + meta_test_prefetch[n] for n in data_path["prefetch"]}
    sparsity, layers = measured_sparsity(method, the_plan, ctx)
    done = Finished(source, data.record, outcome, scored, splits, sparsity, input_size, data_path,
                    time.perf_counter() - started)
    result = with_delta_m(assemble_result(the_plan, done, reference), reference, notice)
    result = dataclasses.replace(result, inference=account_live(method, result, notice))
    return Executed(result, write_run_folder(the_plan, method, result, layers, checkpoint))


def _data_path(path: DataPath, train_data: TensorSet | StreamingSet) -> dict[str, Any]:
    """How the data were held, for the result's environment (where the tensors lived; a stream's prefetch)."""
    held: dict[str, Any] = path.to_json()
    if isinstance(train_data, TensorSet):
        held["resident"] = str(train_data.tensors["image"].device)
    else:
        held["prefetch"] = dict(train_data.stats)
    return held

