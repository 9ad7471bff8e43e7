"""``mtbench run``: resolve data and method, (meta-)train on the seen tasks, meta-test every task, write the result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import sys
import time
import typing
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtbench
from mtbench import catalog
from mtbench.data.cache import ArrowCacheReader, _locked, find_prepared, mtbench_home
from mtbench.data.io import atomic_write_json
from mtbench.data.layouts import open_reader
from mtbench.data.reader import Reader
from mtbench.episodes import TaskView
from mtbench.errors import ConfigError, DatasetNotFoundError
from mtbench.methods import MethodInfo, methods
from mtbench.plots import sparsity_chart
from mtbench.presets import Budget
from mtbench.presets import budget as get_budget
from mtbench.results import default_results_dir, find_reference, store
from mtbench.scoring import ScoringError, run_delta_m
from mtbench.sparsity import sparsity_stats
from mtbench.specs import DatasetSpec, TaskSpec
from mtbench.training import TensorSet, TrainContext, meta_test, train

SCHEMA_VERSION = 1
REFERENCE_METHOD = "stl"

Notice = Callable[[str], None]
ProgressFactory = Callable[[str], AbstractContextManager[Callable[..., None]]]


@dataclass
class RunRequest:
    """Everything ``mtbench run`` was asked for."""

    method: str
    dataset: str | None = None
    data_root: Path | None = None
    unseen: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None
    seed: int = 0
    budget: str = "quick"
    overrides: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    device: str = "auto"
    plugins: tuple[Path, ...] = ()
    results: Path | None = None
    reference: bool = True


# --- configuration ------------------------------------------------------------------------------------


def _parse_value(name: str, text: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if text not in allowed:
            raise ConfigError(f"--set {name}: not an allowed value", expected=" | ".join(map(str, allowed)), found=text)
        return text
    if annotation is bool:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"--set {name}: not a boolean", expected="true or false", found=text)
        return lowered in ("true", "1", "yes")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ConfigError(
                f"--set {name}: not a valid {annotation.__name__}", expected=annotation.__name__, found=repr(text)
            ) from None
    raise ConfigError(f"--set {name}: cannot be set from the command line", found=str(annotation))


def build_config(config_cls: type, overrides: dict[str, str]) -> Any:
    """The method's config dataclass with ``--set key=value`` applied and type-checked."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    values = {}
    for key, text in overrides.items():
        if key not in names:
            raise ConfigError(
                f"unknown option --set {key}",
                expected=", ".join(names) or "no options for this method",
                found=key,
                fix="`mtbench ls methods` names the methods; their options are the "
                "fields of the config dataclass in the method's file",
            )
        values[key] = _parse_value(key, text, hints[key])
    return config_cls(**values)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set takes key=value", expected="key=value", found=item)
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides


# --- data ---------------------------------------------------------------------------------------------


def synthetic_cache(spec: DatasetSpec, plan: Budget, notice: Notice | None = None) -> Path:
    """The synthetic stand-in for a budget, generated once into ``$MTBENCH_HOME/synth/``."""
    options = {**spec.synth_options, **plan.synth_options.get(spec.name, {})}
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    path = mtbench_home() / "synth" / f"{spec.name}-n{plan.synth_samples}-{tag}-seed0"
    with _locked(mtbench_home() / "synth" / ".lock"):
        if not path.is_dir():
            if notice:
                notice(f"generating {spec.name} ({plan.synth_samples} samples, {tag}) once into {path}")
            assert spec.generator is not None
            spec.generator(path, n=plan.synth_samples, seed=0, layout=spec.layouts[0], **options)
    return path


def resolve_data(
    dataset: str | None, data_root: Path | None, plan: Budget, notice: Notice | None = None
) -> tuple[DatasetSpec, Reader]:
    """The data set a run uses. With no ``dataset``: a prepared real NYU-v2, else ``nyuv2-synth`` (said loudly)."""
    if data_root is not None:
        spec = catalog.dataset(dataset or "nyuv2")
        reader = open_reader(spec.family, data_root)
        actual = reader.identity(content=False)
        if actual.synthetic and not spec.synthetic:
            spec = catalog.dataset(actual.dataset)
        return spec, reader
    if dataset is None:
        prepared = find_prepared("nyuv2")
        if prepared is not None:
            return catalog.dataset("nyuv2"), ArrowCacheReader(prepared)
        if notice:
            notice(
                "no prepared real NYU-v2 found (`mtbench data prepare nyuv2 --from DIR` makes one): this run "
                "uses the SYNTHETIC stand-in nyuv2-synth, and its result is tagged synthetic"
            )
        dataset = "nyuv2-synth"
    spec = catalog.dataset(dataset)
    if spec.synthetic:
        return spec, open_reader(spec.family, synthetic_cache(spec, plan, notice))
    prepared = find_prepared(spec.name)
    if prepared is None:
        raise DatasetNotFoundError(
            f"no prepared copy of {spec.name}",
            expected="a prepared Arrow cache",
            found="none",
            fix=f"run `mtbench data prepare {spec.name} --from /path/to/it` once, or use {spec.name}-synth",
        )
    return spec, ArrowCacheReader(prepared)


def _split_name(reader: Reader, wanted: str) -> str:
    if wanted in reader.splits():
        return wanted
    raise DatasetNotFoundError(
        f"split {wanted!r} missing from {reader.root}", expected=wanted, found=", ".join(reader.splits())
    )


# --- the run ------------------------------------------------------------------------------------------


def resolve_tasks(
    spec: DatasetSpec, reader: Reader, tasks: Sequence[str] | None, unseen: Sequence[str]
) -> tuple[list[TaskSpec], list[TaskSpec]]:
    held_out = [catalog.task(spec.family, name) for name in unseen]
    for task in held_out:
        if not task.may_hold_out:
            raise ConfigError(f"task {task.name!r} may not be held out", found=task.name)
    names = tasks if tasks else [t for t in spec.default_tasks]
    seen = [catalog.task(spec.family, n) for n in names if n not in {t.name for t in held_out}]
    if not seen:
        raise ConfigError(
            "no seen task left to train on",
            expected="at least one task not held out",
            found=f"tasks {list(names)}, unseen {list(unseen)}",
        )
    missing = [t.name for t in (*seen, *held_out) if t.target not in reader.target_sources]
    if missing:
        raise ConfigError(
            f"the {reader.layout} layout does not provide {', '.join(missing)}",
            expected=", ".join(reader.targets()),
            found=", ".join(missing),
            fix="choose tasks with --tasks, or a layout that provides them",
        )
    return seen, held_out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "CUDA requested but not available", expected="a CUDA device", found="none", fix="use --device cpu or auto"
        )
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "mtbench": mtbench.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version

        info["learn2learn"] = version("learn2learn")
    except Exception:  # pragma: no cover - learn2learn is a dependency
        info["learn2learn"] = None
    return info


def execute(
    request: RunRequest, notice: Notice | None = None, progress: ProgressFactory | None = None
) -> dict[str, Any]:
    """Run one configuration end to end and write its result JSON; returns the result payload."""
    started = time.perf_counter()
    plan = get_budget(request.budget)
    registry = methods(request.plugins)
    info: MethodInfo = registry.get(request.method)
    config = build_config(info.config, request.overrides)
    spec, reader = resolve_data(request.dataset, request.data_root, plan, notice)
    seen, held_out = resolve_tasks(spec, reader, request.tasks, request.unseen)
    train_split = _split_name(reader, spec.train_split)
    test_split = _split_name(reader, spec.test_split)
    device = pick_device(request.device)
    torch.manual_seed(request.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    on_cuda = device.type == "cuda"

    identity = reader.identity()
    results_dir = request.results or default_results_dir()
    signature = {
        "dataset": {"name": spec.name, "synthetic": identity.synthetic, "identity": identity.to_dict()},
        "protocol": protocol_dict(plan, seen, held_out),
    }
    reference = None
    if request.reference and info.name != REFERENCE_METHOD:
        reference = find_reference(results_dir, {**signature, "seed": request.seed})
        if reference is None:
            if notice:
                notice(
                    f"no {REFERENCE_METHOD} reference for this data set, protocol and seed yet: training it first "
                    f"(stored in {results_dir} and reused by later runs)"
                )
            reference = execute(
                # the data set is resolved by now: naming it keeps the reference run from repeating notices
                dataclasses.replace(
                    request, method=REFERENCE_METHOD, overrides={}, out=None, reference=False, dataset=spec.name
                ),
                notice,
                progress,
            )
    view = TaskView(reader, train_split, seen, held_out)
    count = len(view) if plan.max_train_samples is None else min(len(view), plan.max_train_samples)
    load_start = time.perf_counter()
    train_data = TensorSet.load(view.read, count, [t.target for t in seen], plan.resolution)
    ctx = TrainContext(plan, seen, train_data, request.seed, device, channels_last=on_cuda, autocast=on_cuda)
    method = info.method(config)

    bar = progress or (lambda _description: nullcontext(lambda *args, **kwargs: None))
    with bar(
        f"{info.name}: {'meta-training' if method.kind == 'meta' else 'training'} ({', '.join(t.name for t in seen)})"
    ) as update:
        outcome = train(method, ctx, progress=update)

    cache: dict[tuple[str, str], TensorSet] = {}

    def load(task: TaskSpec, split: str) -> TensorSet:
        name = train_split if split == "train" else test_split
        limit = plan.max_train_samples if split == "train" else plan.max_test_samples
        key = (task.name, name)
        if key not in cache:
            total = reader.num_samples(name)
            cache[key] = TensorSet.load(
                lambda i, targets: reader.read(name, i, targets),
                total if limit is None else min(total, limit),
                [task.target],
                plan.resolution,
            )
        return cache[key]

    order = [(t, True) for t in seen] + [(t, False) for t in held_out]
    with bar("meta-test: fine-tune and evaluate every task") as update:
        done = [0]

        def step(_message: str) -> None:
            update(done[0], len(order), {})
            done[0] += 1

        results = meta_test(method, ctx, order, load, progress=step)
        update(len(order), len(order), {})

    shared_stats = sparsity_stats(method.model_for(seen[0], ctx), method.sparsity_axis).to_dict()
    shared_stats["axis"] = method.sparsity_axis
    payload = result_payload(
        request,
        info,
        registry.source(info.name),
        config,
        spec,
        identity,
        plan,
        seen,
        held_out,
        outcome,
        results,
        shared_stats,
        device,
        time.perf_counter() - started,
        time.perf_counter() - load_start,
    )
    payload["input_size"] = list(train_data.tensors["image"].shape[-2:])
    payload["delta_m"] = None
    if reference is not None or info.name == REFERENCE_METHOD:
        try:
            payload["delta_m"] = run_delta_m(payload, reference if reference is not None else payload)
        except ScoringError as error:  # e.g. a reference metric of exactly 0 after a tiny budget
            payload["delta_m"] = {"unavailable": str(error)}
            if notice:
                notice(f"Δm not computed: {error.problem}")
    out = request.out or Path("runs") / payload["run_id"]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), out / "checkpoint.pt")
    atomic_write_json(out / "result.json", payload)
    payload["inference"] = _account(out, notice)
    sparsity_chart(
        shared_stats,
        out / "sparsity.png",
        title=f"{info.name} on {spec.name}, seed {request.seed}: zeroed channel groups per shared conv "
        f"({100 * shared_stats['group_sparsity']:.1f} % overall)",
    )
    stored, replaced = store(payload, results_dir)
    if replaced and notice:
        notice(f"this configuration and seed were run before: {stored} now holds the new result (not counted twice)")
    payload["_path"] = str(out / "result.json")
    payload["_stored"] = str(stored)
    return payload


def _account(run_dir: Path, notice: Notice | None) -> dict[str, Any] | None:
    """Parameters and FLOPs of the trained network(s), dense against compact (no latency: that is a benchmark).

    The compact network is the one `mtbench export` writes (zeroed channels physically removed).
    """
    from mtbench.inference import bench_inference

    try:
        return bench_inference(run_dir, batch_sizes=(), update=True)
    except Exception as error:  # the run itself is complete; say why its accounting is missing
        if notice:
            notice(f"parameter/FLOP accounting failed ({type(error).__name__}: {error}); `mtbench bench inference` retries")
        return None


def front_at(payload: dict[str, Any], results_dir: Path) -> dict[str, Any] | None:
    """The stored fixed-λ front of this run's data set and protocol, read at this run's sparsity.

    Returns ``{"sparsity_pct", "seen", "unseen", "variants"}`` (Δm of the front, interpolated between the
    fixed-λ variants' means over seeds), or None when fewer than two fixed-λ variants are stored or the
    run's sparsity is outside the front.
    """
    from mtbench import leaderboard
    from mtbench.results import protocol_signature

    if not payload.get("sparsity"):
        return None
    signature = protocol_signature(payload)
    for group in leaderboard.collect(results_dir):
        sample = next(iter(next(iter(group.runs.values())).values()))
        if protocol_signature(sample) != signature:
            continue
        front = leaderboard.front_rows(leaderboard.rows(group))
        pct = 100 * payload["sparsity"]["group_sparsity"]
        seen = leaderboard.front_delta_at(front, pct, "seen")
        if len(front) < 2 or seen is None:
            return None
        return {"sparsity_pct": pct, "seen": seen, "unseen": leaderboard.front_delta_at(front, pct, "unseen"),
                "variants": len(front)}
    return None


def protocol_dict(plan: Budget, seen: Sequence[TaskSpec], held_out: Sequence[TaskSpec]) -> dict[str, Any]:
    """The protocol part of a result: what every compared run must share."""
    return {
        "budget": plan.name,
        "seen": [t.name for t in seen],
        "unseen": [t.name for t in held_out],
        "task_versions": {t.name: t.version for t in (*seen, *held_out)},
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        "finetune_steps": plan.finetune_steps,
        "finetune_lr": plan.finetune_lr,
        "resolution": list(plan.resolution) if plan.resolution else None,
        "arch": dataclasses.asdict(plan.arch),
        "max_train_samples": plan.max_train_samples,
        "max_test_samples": plan.max_test_samples,
    }


def result_payload(
    request: RunRequest,
    info: MethodInfo,
    source: str,
    config: Any,
    spec: DatasetSpec,
    identity: Any,
    plan: Budget,
    seen: list[TaskSpec],
    held_out: list[TaskSpec],
    outcome: Any,
    results: list[Any],
    shared_stats: dict | None,
    device: torch.device,
    total_seconds: float,
    after_load_seconds: float,
) -> dict[str, Any]:
    created = dt.datetime.now(dt.timezone.utc)
    unseen_tag = "+".join(t.name for t in held_out) or "none"
    run_id = (
        f"{created:%Y%m%d-%H%M%S}-{spec.name}-{info.name}-{plan.name}-unseen-{unseen_tag}-"
        f"seed{request.seed}-{uuid.uuid4().hex[:6]}"
    )
    lam_trajectory = [[h["step"], h["lambda"]] for h in outcome.history if "lambda" in h]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "created": created.isoformat(timespec="seconds"),
        "method": {
            "name": info.name,
            "source": source,
            "summary": info.summary,
            "paper": info.paper,
            "link": info.link,
            "deviations": info.deviations,
            "kind": getattr(info.method, "kind", "mtl"),
            "config": dataclasses.asdict(config),
        },
        "dataset": {
            "name": spec.name,
            "family": spec.family,
            "synthetic": identity.synthetic,
            "identity": identity.to_dict(),
            "train_split": spec.train_split,
            "test_split": spec.test_split,
        },
        "protocol": protocol_dict(plan, seen, held_out),
        "seed": request.seed,
        "overrides": request.overrides,
        "environment": environment(device),
        "tasks": {
            r.task.name: {
                "seen": r.seen,
                "version": r.task.version,
                "title": r.task.title,
                "metrics": {
                    m.name: {
                        "value": r.metrics[m.name],
                        "higher_is_better": m.higher_is_better,
                        "in_delta_m": m.in_delta_m,
                    }
                    for m in r.task.metrics
                },
                "finetune_seconds": r.finetune_seconds,
                "eval_seconds": r.eval_seconds,
            }
            for r in results
        },
        "sparsity": shared_stats,
        "lambda": {"start": outcome.lam_start, "end": outcome.lam_end, "trajectory": lam_trajectory},
        "history": outcome.history,
        "timings": {
            "train_seconds": outcome.seconds,
            "meta_test_seconds": sum(r.finetune_seconds + r.eval_seconds for r in results),
            "total_seconds": total_seconds,
        },
    }
