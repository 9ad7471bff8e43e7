"""``mtbench run``: resolve data and method, (meta-)train on the seen tasks, meta-test every task, write the result."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtbench
from mtbench import catalog, protocol
from mtbench.allocator import applied_settings, tune_malloc
from mtbench.data.cache import ArrowCacheReader, _locked, find_prepared, mtbench_home, prepared_synthetic
from mtbench.data.io import atomic_write_json
from mtbench.data.layouts import open_reader
from mtbench.data.reader import SYNTH_MANIFEST, Reader
from mtbench.episodes import TaskView
from mtbench.errors import ConfigError, DatasetNotFoundError, OutputError, ResultFileError, UnknownNameError
from mtbench.methods import MethodInfo, methods
from mtbench.options import check_config
from mtbench.plots import lambda_chart, sparsity_chart
from mtbench.presets import Budget
from mtbench.presets import budget as get_budget
from mtbench.protocol import IndexedRead, RoleRead, carve_validation
from mtbench.registry import safe_name
from mtbench.result import (
    REFERENCE_METHOD,
    DatasetRecord,
    DeltaM,
    Evaluation,
    LambdaTrace,
    MethodRecord,
    Metric,
    Protocol,
    RunResult,
    Sparsity,
    TaskOutcome,
    Timings,
    TrainingCost,
    configuration_key,
    protocol_signature,
)
from mtbench.results import (
    default_results_dir,
    find_reference,
    key_path,
    read_result,
    require_inside,
    result_path,
    store,
)
from mtbench.scoring import ScoringError, run_delta_m
from mtbench.sparsity import sparsity_stats
from mtbench.specs import DatasetSpec, TaskSpec
from mtbench.streaming import (
    StreamingMetaTestData,
    StreamingSet,
    check_data_options,
    choose_data_path,
    sample_bytes,
)
from mtbench.training import (
    CHECKPOINT_EVERY,
    MetaTestData,
    TensorSet,
    TrainContext,
    train,
    train_identity,
    training_flops,
)

#: Free space an output folder must have before a run starts (a smoke run writes about 1 MiB; a paper run more).
MIN_FREE_BYTES = 50 * 2**20
#: Default parent of run folders (``runs/<run id>``).
RUNS_DIR = Path("runs")
#: The training checkpoint in a run folder (removed once result.json is written). Without ``--out`` it lives
#: in ``runs/.resume/<method>-seed<seed>-<configuration digest>/`` (the run id is only made at the end), so
#: a rerun of the same configuration without ``--out`` resumes too.
RESUME_FILE = "resume.pt"

#: share of the GPU's memory a compact training set may take to be moved onto the GPU once (CUDA runs)
RESIDENT_SHARE = 0.25

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
    #: Continue from a checkpoint of this same configuration in the run folder; False starts from step 0.
    resume: bool = True
    #: Steps between two training checkpoints.
    checkpoint_every: int = CHECKPOINT_EVERY
    #: Deterministic kernels (``torch.use_deterministic_algorithms``, no cuDNN autotuning, no fused Adam);
    #: None (auto): True on the CPU (exact numbers per machine and thread count), False on CUDA, where
    #: ``torch.backends.cudnn.benchmark`` is set instead. The result's environment records which.
    deterministic: bool | None = None
    #: Compile the training forwards with `torch.compile` (see `TrainContext.compile`).
    compile: bool = False
    #: BatchNorm recalibration batches before every evaluation (None: the budget's; 0: none, the ablation).
    bn_batches: int | None = None
    #: CPU threads of torch for this run (None: torch's default, all cores). A seed's numbers depend on it; the
    #: published tables use 1.
    threads: int | None = None
    #: How the splits are held: ``memory`` (compact tensors), ``stream`` (read batch by batch through DataLoader
    #: workers) or ``auto`` (stream when the in-memory estimate exceeds ``memory_budget_gib``); see
    #: `mtbench.streaming.choose_data_path`. Either path gives the same numbers.
    data_mode: str = "auto"
    #: The in-memory data's budget in GiB for ``auto`` (None: half of the machine's memory).
    memory_budget_gib: float | None = None
    #: DataLoader workers per stream when streaming (None: `mtbench.streaming.default_workers`).
    loader_workers: int | None = None

    def resolved_deterministic(self, device: torch.device) -> bool:
        """``deterministic``, with auto resolved for ``device`` (True unless CUDA)."""
        return self.deterministic if self.deterministic is not None else device.type != "cuda"


def use_deterministic_algorithms(mode: bool, *, compiling: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``, without importing TorchInductor unless needed.

    The public function also sets TorchInductor's own ``deterministic`` option, and importing TorchInductor
    for that costs about 1.6 s of CPU per run (torch 2.14). Only compiled code reads that option, so a run
    that compiles nothing sets the kernel flag alone (the call the public function makes); a compiling run,
    or one where TorchInductor is already imported, goes through the public function.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiling or "torch._inductor.config" in sys.modules or set_flag is None:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        set_flag(mode, warn_only=True)


def apply_determinism(request: RunRequest, device: torch.device) -> bool:
    """Set torch's kernel choice for ``request`` on ``device``; returns whether the run is deterministic.

    Deterministic: ``torch.use_deterministic_algorithms(True)`` (warn-only) and no cuDNN autotuning;
    otherwise neither, and ``torch.backends.cudnn.benchmark`` on CUDA (autotuned convolutions).
    """
    deterministic = request.resolved_deterministic(device)
    use_deterministic_algorithms(deterministic, compiling=request.compile)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return deterministic


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
    config = config_cls(**values)
    check_config(config)  # finite, and inside each option's declared range (`mtbench.options.bounded`)
    return config


PUBLISHED_THREADS = 1  # the CPU thread count of every published result
_THREADS_NOTICED: set[int] = set()


def apply_threads(threads: int | None, notice: Notice | None = None) -> int:
    """Set torch's CPU thread count (None: keep its default) and say when it differs from the published tables'.

    Returns the thread count the run uses.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(
                "--threads must be a positive integer", expected="1, 2, …", found=repr(threads),
                fix=f"pass --threads {PUBLISHED_THREADS} to reproduce the published tables",
            )
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    if used != PUBLISHED_THREADS and notice is not None and used not in _THREADS_NOTICED:
        _THREADS_NOTICED.add(used)  # once per process (a run plans its stl reference too)
        notice(
            f"this run uses {used} CPU threads; the published tables use {PUBLISHED_THREADS}, and a seed's last "
            f"digits depend on the count: --threads {PUBLISHED_THREADS} reproduces them exactly"
        )
    return used


#: every seeded generator of a run (Python's, numpy's legacy RandomState, torch's) accepts a seed in [0, 2³²)
SEED_LIMIT = 2**32


def check_seed(seed: Any) -> None:
    """Refuse a seed that some seeded generator of a run would reject, before anything is loaded or trained."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(
            f"seed {seed!r} is out of range",
            expected=f"an integer with 0 ≤ seed < 2^32 ({SEED_LIMIT:,})",
            found=repr(seed),
            fix="pass --seed 0, 1, 2, … (the published tables use 0–4)",
        )


def parse_set(items: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set takes key=value", expected="key=value", found=item)
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides


# --- checks before anything is loaded or trained -------------------------------------------------------


def check_output_dir(path: Path, role: str, option: str) -> None:
    """Fail fast unless ``path`` is (or can become) a writable folder with ``MIN_FREE_BYTES`` free.

    The nearest existing folder on the way to ``path`` is probed by creating and deleting a temporary file,
    so permissions, read-only file systems and files in the way are all caught; nothing is left behind and
    ``path`` itself is not created here.

    Args:
        path: the folder a run will write into.
        role: what it is, for the message (``--out``, ``results store`` …).
        option: the option that chooses it (``--out``, ``--results``), for the fix.
    """
    fix = f"pass {option} a folder you can write to"
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(
            f"{role} {path} is not a folder",
            expected="a folder (existing or to be created)",
            found="a file" if path.is_file() else "something that is not a folder",
            fix=f"remove or rename {path}, or {fix}",
        )
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{role} {path} cannot be created: {existing} is not a folder",
            expected=f"{existing} to be a folder",
            found="a file" if existing.is_file() else "something that is not a folder",
            fix=fix,
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".mtbench-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"{role} {path} is not writable",
            expected=f"permission to create files in {existing}",
            found=f"{type(error).__name__}: {error.strerror or error}",
            fix=fix,
        ) from None
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise OutputError(
            f"{role} {path}: too little free space",
            expected=f"at least {MIN_FREE_BYTES // 2**20} MiB free on the file system of {existing}",
            found=f"{free / 2**20:.1f} MiB",
            fix=f"free some space, or {fix}",
        )


def check_device_name(name: str) -> None:
    """Reject a ``--device`` that is none of auto, cpu, cuda, cuda:N, mps (when torch has MPS)."""
    has_mps = hasattr(torch.backends, "mps")
    allowed = ["auto", "cpu", "cuda", "cuda:N", *(["mps"] if has_mps else [])]
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name) or (name == "mps" and has_mps):
        return
    raise ConfigError(
        f"unknown device {name!r}",
        expected=" | ".join(allowed),
        found=name,
        fix="--device auto uses CUDA when available, else the CPU",
    )


def _short(name: str) -> str:
    return name.split("/")[-1]


def _duplicates(names: Sequence[str]) -> list[str]:
    return [name for name, count in Counter(map(_short, names)).items() if count > 1]


def check_task_options(family: str, tasks: Sequence[str] | None, unseen: Sequence[str]) -> None:
    """Reject repeated names, a task both seen and held out, and task names not of ``family``."""
    for option, names in (("--unseen", unseen), ("--tasks", tasks or ())):
        repeated = _duplicates(names)
        if repeated:
            raise ConfigError(
                f"{option} names {', '.join(repeated)} more than once",
                expected=f"each task once in {option}",
                found=" ".join(f"{option} {n}" for n in names),
                fix=f"give each task once: {' '.join(f'{option} {n}' for n in dict.fromkeys(map(_short, names)))}",
            )
    held_out = {_short(n) for n in unseen}
    both = [n for n in dict.fromkeys(map(_short, tasks or ())) if n in held_out]
    if both:
        raise ConfigError(
            f"{', '.join(both)} is both a seen task (--tasks) and held out (--unseen)",
            expected="--tasks (seen, trained on) and --unseen (held out from training) to be disjoint",
            found=f"--tasks {' '.join(tasks or ())}; --unseen {' '.join(unseen)}",
            fix="drop it from --tasks to hold it out, or from --unseen to train on it",
        )
    for name in (*unseen, *(tasks or ())):
        task_of(family, name)


def task_of(family: str, name: str) -> TaskSpec:
    """``catalog.task`` that also refuses another family's task, and whose error says which data set the
    task belongs to and which command lists the right ones (``mtbench ls tasks FAMILY``)."""
    short = _short(name)
    try:
        task = catalog.task(family, name)
        if task.family == family:
            return task
    except UnknownNameError:
        pass
    own = [t.name for t in catalog.family_tasks(family)]
    elsewhere = sorted({t.family for _, t in catalog.tasks().items() if t.name == short and t.family != family})
    listing = f"`mtbench ls tasks {family}` lists them"
    if elsewhere:
        sets = [n for n in catalog.datasets().names() if catalog.dataset(n).family in elsewhere]
        fix = (
            f"{short!r} is a task of {' and '.join(elsewhere)}: run on {' or '.join(sets)} with --dataset, "
            f"or pick a {family} task ({listing})"
        )
    else:
        close = difflib.get_close_matches(short, own, n=3, cutoff=0.5)
        fix = f"did you mean {', '.join(repr(c) for c in close)}? {listing}" if close else listing
    raise UnknownNameError(
        f"unknown {family} task {short!r}",
        expected=f"one of the {family} tasks: {', '.join(own)}",
        found=repr(name),
        fix=fix,
    )


# --- data ---------------------------------------------------------------------------------------------


def synthetic_path(spec: DatasetSpec, budget: Budget) -> tuple[Path, dict[str, Any]]:
    """Where the synthetic stand-in of a budget lives (``$MTBENCH_HOME/synth/``), and its generator options."""
    options = {**spec.synth_options, **budget.synth_options.get(spec.name, {})}
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    return mtbench_home() / "synth" / f"{spec.name}-n{budget.synth_samples}-{tag}-seed0", options


def synthetic_cache(spec: DatasetSpec, budget: Budget, notice: Notice | None = None) -> Path:
    """The synthetic stand-in for a budget, generated once into ``$MTBENCH_HOME/synth/``."""
    path, options = synthetic_path(spec, budget)
    with _locked(mtbench_home() / "synth" / ".lock"):
        if not path.is_dir():
            if notice:
                tag = ", ".join(f"{k} {v}" for k, v in sorted(options.items()))
                notice(f"generating {spec.name} ({budget.synth_samples} samples, {tag}) once into {path}")
            assert spec.generator is not None
            spec.generator(path, n=budget.synth_samples, seed=0, layout=spec.layouts[0], **options)
    return path


def _open_root(dataset: str | None, data_root: Path) -> tuple[DatasetSpec, Reader]:
    """The reader of ``--data-root``; refuses a folder that is not the data set ``--dataset`` names."""
    spec = catalog.dataset(dataset or "nyuv2")
    reader = open_reader(spec.family, data_root)
    actual = reader.identity(content=False)
    if spec.synthetic and (not actual.synthetic or actual.dataset != spec.name):
        what = f"synthetic {actual.dataset}" if actual.synthetic else f"real {actual.dataset}"
        raise ConfigError(
            f"--data-root {data_root} is not {spec.name}: it is {what} data ({reader.layout} layout)",
            expected=f"a folder written by `mtbench data synth {spec.name}` (it carries {SYNTH_MANIFEST})",
            found=f"no {SYNTH_MANIFEST}" if not actual.synthetic else f"{SYNTH_MANIFEST} of {actual.dataset}",
            fix=f"name what the folder holds: --dataset {actual.dataset if actual.synthetic else spec.family}",
        )
    if actual.synthetic and not spec.synthetic:
        spec = catalog.dataset(actual.dataset)
    return spec, reader


def _prepared(spec: DatasetSpec) -> Path:
    prepared = find_prepared(spec.name)
    if prepared is None:
        raise DatasetNotFoundError(
            f"no prepared copy of {spec.name}",
            expected="a prepared Arrow cache",
            found="none",
            fix=f"run `mtbench data prepare {spec.name} --from /path/to/it` once, or use {spec.name}-synth",
        )
    return prepared


def choose_data(
    dataset: str | None, data_root: Path | None, budget: Budget, notice: Notice | None = None
) -> tuple[DatasetSpec, str]:
    """The data set a run uses and where its files come from, without generating or reading samples.

    With no ``dataset``: a prepared real NYU-v2, else ``nyuv2-synth`` (said loudly).
    """
    if data_root is not None:
        spec, reader = _open_root(dataset, data_root)
        kind = "synthetic" if spec.synthetic else "real"
        return spec, f"{kind} files in {data_root} ({reader.layout} layout)"
    if dataset is None:
        prepared = find_prepared("nyuv2")
        if prepared is not None:
            return catalog.dataset("nyuv2"), f"prepared Arrow cache {prepared}"
        if notice:
            notice(
                "no prepared real NYU-v2 found (`mtbench data prepare nyuv2 --from DIR` makes one): this run "
                "uses the SYNTHETIC stand-in nyuv2-synth, and its result is tagged synthetic"
            )
        dataset = "nyuv2-synth"
    spec = catalog.dataset(dataset)
    if spec.synthetic:
        path, _ = synthetic_path(spec, budget)
        state = "cached" if path.is_dir() else "generated on first use"
        return spec, f"SYNTHETIC stand-in, {budget.synth_samples} samples in {path} ({state})"
    return spec, f"prepared Arrow cache {_prepared(spec)}"


def resolve_data(
    dataset: str | None, data_root: Path | None, budget: Budget, notice: Notice | None = None
) -> tuple[DatasetSpec, Reader]:
    """The data set a run uses, opened (see `choose_data`). A synthetic stand-in is generated here, once, and
    read, like a prepared real set, through an Arrow cache (`synthetic_reader`); ``data_root`` is read as it is."""
    if data_root is not None:
        return _open_root(dataset, data_root)
    spec, _ = choose_data(dataset, None, budget, notice)
    if spec.synthetic:
        return spec, synthetic_reader(spec, budget, notice)
    return spec, ArrowCacheReader(_prepared(spec))


def synthetic_reader(spec: DatasetSpec, budget: Budget, notice: Notice | None = None) -> ArrowCacheReader:
    """The synthetic stand-in of a budget (`synthetic_cache`) through its Arrow cache, prepared from the generated
    folder once (`prepared_synthetic`: keyed by the folder's content fingerprint). The cache holds exactly the
    arrays the folder's reader gives, and its identity is the folder's (fingerprint, synthetic flag, generator
    manifest; layout ``arrow-cache(<the folder's layout>)``), so results and their keys do not change."""
    generated = open_reader(spec.family, synthetic_cache(spec, budget, notice))
    return ArrowCacheReader(prepared_synthetic(generated, notice=notice))


def _split_name(reader: Reader, wanted: str) -> str:
    if wanted in reader.splits():
        return wanted
    raise DatasetNotFoundError(
        f"split {wanted!r} missing from {reader.root}", expected=wanted, found=", ".join(reader.splits())
    )


# --- the run ------------------------------------------------------------------------------------------


def plan_tasks(
    spec: DatasetSpec, tasks: Sequence[str] | None, unseen: Sequence[str]
) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """The seen and held-out tasks of a run (``tasks`` default to the data set's)."""
    held_out = [task_of(spec.family, name) for name in unseen]
    for task in held_out:
        if not task.may_hold_out:
            raise ConfigError(f"task {task.name!r} may not be held out", found=task.name)
    names = tasks if tasks else [t for t in spec.default_tasks]
    seen = [task_of(spec.family, n) for n in names if n not in {t.name for t in held_out}]
    if not seen:
        raise ConfigError(
            "no seen task left to train on",
            expected="at least one task not held out",
            found=f"tasks {list(names)}, unseen {list(unseen)}",
        )
    return seen, held_out


def check_targets(reader: Reader, tasks: Sequence[TaskSpec]) -> None:
    """Refuse tasks whose targets the data's layout does not provide."""
    missing = [t.name for t in tasks if t.target not in reader.target_sources]
    if missing:
        raise ConfigError(
            f"the {reader.layout} layout does not provide {', '.join(missing)}",
            expected=", ".join(reader.targets()),
            found=", ".join(missing),
            fix="choose tasks with --tasks, or a layout that provides them",
        )


def pick_device(name: str) -> torch.device:
    """The torch device for ``--device``; unknown names and absent devices raise `ConfigError`."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "CUDA requested but not available",
                expected="a CUDA device",
                found="none",
                fix="use --device cpu or auto",
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"no CUDA device {index}",
                expected=f"cuda:0 … cuda:{torch.cuda.device_count() - 1}",
                found=name,
                fix="use --device cuda or auto",
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "MPS requested but not available", expected="an Apple GPU", found="none", fix="use --device cpu or auto"
        )
    return torch.device(name)


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), or None when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.lru_cache(maxsize=1)
def math_libraries() -> list[str]:
    """The BLAS/oneDNN builds torch uses, one short line each (from ``torch.__config__.show()``)."""
    lines = []
    for line in torch.__config__.show().splitlines():
        text = line.strip().lstrip("- ").strip()
        if text.startswith("Build settings") or not re.search(r"MKL|Math Kernel|oneDNN|DNNL|OpenBLAS", text):
            continue
        if not re.search(r"\d+\.\d+", text):  # "LAPACK is enabled" and the like: no version, no information
            continue
        text = re.sub(r"\s*\(Git Hash [^)]*\)", "", text).split(" for ")[0]
        lines.append(text[:100])
    return lines


def environment(device: torch.device, deterministic: bool | None = None) -> dict[str, Any]:
    """Software and hardware a result was made with.

    ``deterministic`` (None: read torch's current ``use_deterministic_algorithms`` setting, which `run`
    sets from the request) and ``cudnn_benchmark`` (torch's current setting) say which kernels ran.

    Exact numbers of a seed hold for one machine and thread count only: the CPU model, its kernel choice
    (``cpu_capability``: AVX2, AVX512 …) and the number of threads change floating-point reduction order.
    They are recorded here but are *not* part of the configuration key, so a re-run on another machine
    replaces the stored result (with a notice) instead of splitting leaderboard cells by hardware:
    conclusions rest on intervals over seeds, not on the last digits of one seed.
    """
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    info: dict[str, Any] = {
        "mtbench": mtbench.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_capability": capability() if capability else None,
        "math_libraries": math_libraries(),
        "deterministic": torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "malloc": applied_settings(),  # glibc's allocator settings (mtbench.allocator), None if left at the defaults
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version

        info["learn2learn"] = version("learn2learn")
    except Exception:  # pragma: no cover - learn2learn is a dependency
        info["learn2learn"] = None
    return info


@dataclass(frozen=True)
class RunPlan:
    """A checked run, before any data is generated, loaded or trained on (`plan`); `describe` prints it.

    Attributes:
        request: what was asked for.
        method: the registry entry; ``config`` its resolved config (``--set`` applied).
        budget: the budget; ``protocol`` what every compared run shares (tasks, budget settings).
        dataset: the data set spec; ``data`` says where its files come from.
        seen / held_out: the tasks trained on, and those held out from training.
        device: the torch device; ``results_dir`` the store; ``out`` the run folder (None: ``runs/<run id>``).
        needs_reference: whether Δm needs the stl reference (trained first when not stored).
    """

    request: RunRequest
    method: MethodInfo
    config: Any
    budget: Budget
    protocol: Protocol
    dataset: DatasetSpec
    data: str
    seen: tuple[TaskSpec, ...]
    held_out: tuple[TaskSpec, ...]
    device: torch.device
    results_dir: Path
    out: Path | None
    needs_reference: bool

    def describe(self) -> list[tuple[str, str]]:
        """The plan as (what, value) lines."""
        settings = self.protocol.settings
        overrides = ", ".join(f"{k}={v}" for k, v in self.request.overrides.items())
        return [
            ("method", f"{self.method.name} ({self.method.summary})"),
            ("config", json.dumps(_plain(self.config), sort_keys=True) + (f"  (--set {overrides})" if overrides else "")),
            ("data set", f"{self.dataset.name}: {self.data}"),
            ("seen tasks", ", ".join(t.name for t in self.seen)),
            ("held-out tasks", ", ".join(t.name for t in self.held_out) or "none"),
            ("budget", f"{self.budget.name}: {settings['steps']} steps, batch {settings['batch_size']}, "
             f"lr {settings['lr']}, meta-test fine-tuning {settings['finetune_steps']} steps"),
            ("network", json.dumps(settings["arch"], sort_keys=True)),
            ("evaluation", f"mtbench/protocol.py: BatchNorm statistics recomputed on "
             f"{settings['bn_recalibration_batches']} training batches before every evaluation; "
             f"{settings['validation_samples']} training-split samples held out for validation; joint, adapted "
             "and trivial scores on validation and test"),
            ("seed", str(self.request.seed)),
            ("device", f"{self.device} ({torch.get_num_threads()} CPU threads)"),
            ("stl reference", "needed for Δm: reused from the store, else trained first" if self.needs_reference
             else "not needed" if self.method.name == REFERENCE_METHOD else "skipped (--no-reference)"),
            ("run folder", str(self.out) if self.out is not None else f"{RUNS_DIR}/<run id>"),
            ("results store", str(self.results_dir)),
        ]


def _plain(config: Any) -> Any:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def plan(request: RunRequest, notice: Notice | None = None) -> RunPlan:
    """Check a request and resolve what it names, without generating, loading or training anything.

    Checked here, before any long work: output folders writable, device known, method and ``--set`` valid,
    task names of the data set's family, no task repeated or both seen and held out, a ``--data-root``
    holding what ``--dataset`` names.
    """
    budget = get_budget(request.budget)
    check_seed(request.seed)
    if request.bn_batches is not None:
        if request.bn_batches < 0:
            raise ConfigError("--bn-batches must not be negative", expected="0 (no recalibration) or more",
                              found=str(request.bn_batches))
        budget = dataclasses.replace(budget, bn_recalibration_batches=request.bn_batches)
    family = catalog.dataset(request.dataset or "nyuv2").family
    check_task_options(family, request.tasks, request.unseen)
    device = pick_device(request.device)
    check_data_options(request.data_mode, request.memory_budget_gib, request.loader_workers)
    results_dir = request.results or default_results_dir()
    if request.out is not None:
        check_output_dir(request.out, "--out", "--out")
    else:
        check_output_dir(RUNS_DIR, "the default --out parent", "--out")
    check_output_dir(results_dir, "--results" if request.results else "the results store", "--results")
    info: MethodInfo = methods(request.plugins).get(request.method)
    config = build_config(info.config, request.overrides)
    spec, data = choose_data(request.dataset, request.data_root, budget, notice)
    # the store paths this run (and its stl reference) will write, checked now rather than after training:
    # a data-set folder in the store that is a link leading elsewhere is refused here
    require_inside(results_dir / safe_name("dataset", spec.name), results_dir)
    for name in (info.name, REFERENCE_METHOD):
        key_path(results_dir, spec.name, name, request.seed, "0" * 16)
    apply_threads(request.threads, notice)  # once everything is checked
    seen, held_out = plan_tasks(spec, request.tasks, request.unseen)
    return RunPlan(
        request=request,
        method=info,
        config=config,
        budget=budget,
        protocol=Protocol.of(budget, seen, held_out),
        dataset=spec,
        data=data,
        seen=tuple(seen),
        held_out=tuple(held_out),
        device=device,
        results_dir=results_dir,
        out=request.out,
        needs_reference=request.reference and info.name != REFERENCE_METHOD,
    )


def execute(
    request: RunRequest, notice: Notice | None = None, progress: ProgressFactory | None = None
) -> Executed:
    """``mtbench run``: `plan`, `reference_for`, `run`, `record`.

    The stl reference (for Δm), when not stored yet, is trained first, once even when runs race (under a
    lock in the results store), into the run folder ``<out>-stl-reference`` beside ``--out`` (without
    ``--out``: ``runs/<its run id>``). Its time is ``timings.reference_seconds``, not in ``total_seconds``.

    Runs with other thread counts or CPUs share a configuration key (see `environment`); a run that
    replaces a stored result made with another thread count or CPU says so.
    """
    return execute_plan(plan(request, notice), notice, progress)


def execute_plan(the_plan: RunPlan, notice: Notice | None = None, progress: ProgressFactory | None = None) -> Executed:
    """`reference_for`, `run` and `record` of a checked plan."""
    data = open_data(the_plan, notice)  # once: the fingerprint hashes every file of the data set
    reference = reference_for(the_plan, notice, progress, data=data)
    done = run(the_plan, notice=notice, progress=progress, reference=reference, data=data)
    stored = record(done.result, the_plan.results_dir, notice)
    return dataclasses.replace(done, stored=stored)


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


def reference_for(
    the_plan: RunPlan,
    notice: Notice | None = None,
    progress: ProgressFactory | None = None,
    *,
    data: OpenedData | None = None,
) -> Reference | None:
    """The stored stl reference of this plan's data set, protocol and seed, trained first if missing.

    None when the plan needs none. ``data``: the plan's data set already opened (`open_data`). Concurrent runs that need the same reference serialise on a lock file in
    the results store: the first trains it, the others wait and re-read the store. A stored reference file
    that cannot be read is named as corrupt before it is replaced.
    """
    if not the_plan.needs_reference:
        return None
    request, results_dir = the_plan.request, the_plan.results_dir
    data = data or open_data(the_plan, notice)  # the fingerprint is part of the reference's signature
    spec, signature = data.spec, protocol_signature(data.record, the_plan.protocol)
    found = find_reference(results_dir, signature, request.seed)
    if found is not None:
        return Reference(found, 0.0, False)
    start = time.perf_counter()
    query = {"signature": signature, "seed": request.seed}
    digest = hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with _locked(results_dir / ".locks" / f"{REFERENCE_METHOD}-reference-{digest}.lock"):
        found = find_reference(results_dir, signature, request.seed)  # a concurrent run may have trained it
        if found is not None:
            if notice:
                notice(f"a concurrent run trained the {REFERENCE_METHOD} reference meanwhile: reusing it")
            return Reference(found, time.perf_counter() - start, False)
        reference_info = methods(request.plugins).get(REFERENCE_METHOD)
        key = configuration_key(signature, REFERENCE_METHOD, _plain(reference_info.config()), request.seed)
        expected_file = key_path(results_dir, spec.name, REFERENCE_METHOD, request.seed, key)
        out = _reference_out(request.out)
        where = f"run folder {out}" if out is not None else f"run folder under {RUNS_DIR}/"
        problem = _why_unusable(expected_file)
        if notice and problem is not None:
            notice(
                f"the stored {REFERENCE_METHOD} reference {expected_file} is corrupt ({problem}): training it "
                f"again first ({where}); the new result replaces that file"
            )
        elif notice:
            networks = len(the_plan.seen) + len(the_plan.held_out)
            notice(
                f"no {REFERENCE_METHOD} reference for this data set, protocol and seed yet: training it first — "
                f"{networks} single-task networks of {the_plan.budget.steps} steps each, a cost of the order of "
                f"this run's own training ({where}; stored in {results_dir} and reused by later runs)"
            )
        reference = execute(
            # the data set is resolved by now: naming it keeps the reference run from repeating notices
            dataclasses.replace(
                request, method=REFERENCE_METHOD, overrides={}, out=out, reference=False, dataset=spec.name
            ),
            notice,
            progress,
        )
    return Reference(reference.result, time.perf_counter() - start, True)


@dataclass(frozen=True)
class OpenedData:
    """A plan's data set opened for reading, with its identity (fingerprint) computed once."""

    spec: DatasetSpec
    reader: Reader
    record: DatasetRecord


def open_data(the_plan: RunPlan, notice: Notice | None = None) -> OpenedData:
    """The plan's data set opened for reading (a synthetic stand-in is generated here, once)."""
    request = the_plan.request
    spec, reader = resolve_data(the_plan.dataset.name, request.data_root, the_plan.budget, notice)
    check_targets(reader, (*the_plan.seen, *the_plan.held_out))
    identity = reader.identity()
    record = DatasetRecord(
        name=spec.name,
        synthetic=identity.synthetic,
        identity=identity.to_dict(),
        family=spec.family,
        train_split=spec.train_split,
        test_split=spec.test_split,
    )
    return OpenedData(spec, reader, record)


def run(
    the_plan: RunPlan,
    *,
    notice: Notice | None = None,
    progress: ProgressFactory | None = None,
    reference: Reference | None = None,
    data: OpenedData | None = None,
) -> Executed:
    """Train on the seen tasks, meta-test every task, write the run folder; returns the result.

    The run folder (``checkpoint.pt``, ``result.json`` written once, ``sparsity.png``, ``lambda.png``) is the
    run's own output; the results store is written by `record`. ``reference``: Δm is measured against it;
    ``data``: the plan's data set already opened (`open_data`).
    """
    started = time.perf_counter()
    request, budget, info = the_plan.request, the_plan.budget, the_plan.method
    data = data or open_data(the_plan, notice)
    spec, reader, dataset = data.spec, data.reader, data.record
    seen, held_out = list(the_plan.seen), list(the_plan.held_out)
    train_split = _split_name(reader, spec.train_split)
    test_split = _split_name(reader, spec.test_split)
    on_cuda = the_plan.device.type == "cuda"
    torch.manual_seed(request.seed)  # after the reference: its training must not shift this run's RNG state
    tune_malloc()  # before the data are loaded: see mtbench.allocator (the result's environment records it)
    deterministic = apply_determinism(request, the_plan.device)
    view = TaskView(reader, train_split, seen, held_out)
    seen_targets = [t.target for t in seen]

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
    count = len(trained_on)  # training samples used
    read_train = IndexedRead(view.read, tuple(trained_on))
    path = choose_data_path(
        request.data_mode,
        sample_bytes(view.read, seen_targets, budget.resolution),
        count + len(validation) + len(tested_on),
        the_plan.device,
        budget_gib=request.memory_budget_gib,
        workers=request.loader_workers,
    )
    if path.mode == "stream":
        if notice and request.data_mode == "auto":
            notice(f"streaming the data: {path.reason}")
        train_data: TensorSet | StreamingSet = StreamingSet(
            read_train, count, seen_targets, budget.resolution, workers=path.workers, pin_memory=on_cuda
        )
    else:
        train_data = TensorSet.load(read_train, count, seen_targets, budget.resolution)
        gpu_memory = torch.cuda.get_device_properties(the_plan.device).total_memory if on_cuda else 0
        if train_data.nbytes < RESIDENT_SHARE * gpu_memory:
            train_data = train_data.to(the_plan.device)  # uint8 images on the GPU: batches gathered there
    ctx = TrainContext(
        budget, seen, train_data, request.seed, the_plan.device, channels_last=on_cuda, autocast=on_cuda,
        deterministic=deterministic, compile=request.compile,
    )
    method = info.method(the_plan.config)
    source = methods(request.plugins).source(info.name)
    run_identity = {
        "method_name": info.name,
        "method_source": source,
        "dataset": {"name": dataset.name, "synthetic": dataset.synthetic, "identity": dict(dataset.identity)},
        "protocol": the_plan.protocol.to_json(),
    }
    if request.out is not None:
        checkpoint = request.out / RESUME_FILE
    else:
        full = train_identity(method, ctx, run_identity)
        digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
        checkpoint = RUNS_DIR / ".resume" / f"{info.name}-seed{request.seed}-{digest}" / RESUME_FILE
    bar = progress or (lambda _description: nullcontext(lambda *args, **kwargs: None))
    with bar(
        f"{info.name}: {'meta-training' if method.kind == 'meta' else 'training'} ({', '.join(t.name for t in seen)})"
    ) as update:
        outcome = train(
            method,
            ctx,
            progress=update,
            checkpoint=checkpoint,
            every=request.checkpoint_every,
            identity=run_identity,
            resume=request.resume,
            notice=notice,
        )

    image_size = train_data.image_size
    resident = str(train_data.tensors["image"].device) if isinstance(train_data, TensorSet) else None
    prefetch = dict(train_data.stats) if isinstance(train_data, StreamingSet) else None
    train_data.close()  # a streaming set's workers stop here; a set in memory stays for the meta-test
    # one image tensor per split: the training set's for the training split, one read of the validation and
    # test splits; targets per task, the held-out tasks' training targets in one more pass, each released when done
    data: MetaTestData | StreamingMetaTestData = (
        StreamingMetaTestData(roles, roles.splits(), budget.resolution, workers=path.workers, pin_memory=on_cuda)
        if isinstance(train_data, StreamingSet)
        else MetaTestData(
            roles,
            roles.splits(),
            budget.resolution,
            given={"train": train_data},
            together={"train": [t.target for t in held_out]},
        )
    )
    current: list[str] = []

    def load(task: TaskSpec, split: str) -> TensorSet:
        if current and current[0] != task.target:
            data.done(current.pop())  # the previous task is finished: its targets go
        current[:] = [task.target]
        return data.get(split, task.target)

    order = [(t, True) for t in seen] + [(t, False) for t in held_out]
    with bar("scoring: recalibrate, score joint, fine-tune and score every task") as update:
        done = [0]

        def step(_message: str) -> None:
            update(done[0], len(order), {})
            done[0] += 1

        scored = protocol.score(method, ctx, order, load, progress=step)
        data.close()
        update(len(order), len(order), {})

    stats = sparsity_stats(method.model_for(seen[0], ctx), method.sparsity_axis).to_dict()
    reference_seconds = reference.seconds if reference else 0.0
    counted, per_step, flops = training_flops(outcome.history, outcome.steps)
    result = build_result(
        the_plan,
        source,
        dataset,
        outcome,
        scored.tasks,
        Sparsity(
            group_sparsity=stats["group_sparsity"],
            param_sparsity=stats.get("param_sparsity"),
            axis=method.sparsity_axis,
            layers=tuple(stats.get("layers") or ()),
            dead_layers=tuple(stats["dead_layers"]),
            dead_branches=tuple(stats["dead_branches"]),
        ),
        Timings(
            train_seconds=outcome.seconds,
            meta_test_seconds=scored.seconds,
            # a resumed run's total counts its earlier sessions' training too, as train_seconds does
            total_seconds=time.perf_counter() - started + outcome.earlier_seconds,
            reference_seconds=reference_seconds,
            reference_trained=bool(reference and reference.trained),
        ),
        image_size,
        data_path={
            **path.to_json(),
            **({"resident": resident} if resident is not None else {}),
            **({"prefetch": {n: prefetch[n] + data.stats[n] for n in prefetch}} if prefetch is not None else {}),
        },
        evaluation=Evaluation(
            bn_recalibration_batches=budget.bn_recalibration_batches,
            splits={"train": count, "val": len(validation), "test": len(tested_on)},
            validation=f"{len(validation)} fixed samples of the training split {train_split!r}, never trained on",
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
    )
    if reference is not None or info.name == REFERENCE_METHOD:
        try:
            delta = run_delta_m(result, reference.result if reference is not None else result)
        except ScoringError as error:  # e.g. a reference metric of exactly 0 after a tiny budget
            delta = DeltaM(unavailable=str(error))
            if notice:
                notice(f"Δm not computed: {error.problem}")
        result = dataclasses.replace(result, delta_m=delta)
    out = request.out or RUNS_DIR / result.run_id
    try:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(method.state_dict(), out / "checkpoint.pt")
        result = dataclasses.replace(result, inference=_account(out, result, notice))  # before result.json: once
        atomic_write_json(out / "result.json", result.to_json())
        checkpoint.unlink(missing_ok=True)  # the run is complete: nothing left to resume
        if request.out is None:
            with contextlib.suppress(OSError):
                checkpoint.parent.rmdir()  # runs/.resume/<method>-seed<seed>-<digest>/, now empty
    except OSError as error:  # checked before training; a disk that filled up since still gets a short message
        raise OutputError(
            f"cannot write the run folder {out}", expected="a writable folder with free space", found=str(error)
        ) from None
    group_pct = 100 * (result.sparsity.group_sparsity or 0.0) if result.sparsity else 0.0
    sparsity_chart(
        stats,
        out / "sparsity.png",
        title=f"{info.name} on {spec.name}, seed {request.seed}: zeroed channel groups per shared conv "
        f"({group_pct:.1f} % overall)",
    )
    lambda_chart(
        list(result.history), out / "lambda.png",
        title=f"{info.name} on {spec.name}, seed {request.seed}: λ and its meta-gradient",
    )
    return Executed(result, out)


def record(result: RunResult, results_dir: Path, notice: Notice | None = None) -> Path:
    """Write ``result`` into the results store (replacing an earlier run of its configuration and seed)."""
    previous = _stored_environment(result_path(results_dir, result))
    try:
        stored, replaced = store(result, results_dir)
    except OSError as error:
        raise OutputError(
            f"cannot write into the results store {results_dir}",
            expected="a writable folder with free space",
            found=str(error),
            fix="the run itself is in its run folder; `mtbench leaderboard publish RUN_FOLDER` stores it elsewhere",
        ) from None
    if replaced and notice:
        notice(_replacement_notice(stored, previous, dict(result.environment)))
    return stored


def _reference_out(out: Path | None) -> Path | None:
    """Run folder of an auto-trained reference: ``<out>-stl-reference`` beside ``--out``; None: ``runs/<id>``."""
    if out is None:
        return None
    base = out.absolute()
    return base.parent / f"{base.name}-{REFERENCE_METHOD}-reference"


def _why_unusable(path: Path) -> str | None:
    """Why a stored result file that the store did not return cannot serve, or None when there is no file."""
    if not path.exists():
        return None
    try:
        read_result(path)
    except ResultFileError as error:
        problem = error.problem.removeprefix(f"{error.path}: ")
        return f"{problem}: {error.found}" if error.found else problem
    return "valid, but not a result of this protocol"


def _stored_environment(path: Path) -> dict[str, Any] | None:  # raw JSON: an unreadable file is reported, not raised
    """The ``environment`` of the result stored at ``path``: {} when absent, None when unreadable."""
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
        return dict(payload.get("environment") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _replacement_notice(stored: Path, previous: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """What a re-run of a stored configuration and seed says; names a thread count or CPU that changed."""
    if previous is None:
        return f"{stored} held an unreadable result; it now holds this run's"
    text = f"this configuration and seed were run before: {stored} now holds the new result (not counted twice)"
    changed = [key for key in ("threads", "cpu_model") if key in previous and previous[key] != current.get(key)]
    if changed:
        text += (
            f"; it replaces a result made with {previous.get('threads', '?')} thread(s) on CPU "
            f"{previous.get('cpu_model') or 'unknown'} (this run: {current.get('threads')} on "
            f"{current.get('cpu_model') or 'unknown'}), so exact numbers may differ"
        )
    return text


def _account(run_dir: Path, result: RunResult, notice: Notice | None) -> dict[str, Any] | None:
    """Parameters and FLOPs of the trained network(s), dense against compact (no latency: that is a benchmark).

    The compact network is the one `mtbench export` writes (zeroed channels physically removed).
    """
    from mtbench.inference import bench_inference

    try:
        return bench_inference(run_dir, batch_sizes=(), update=False, result=result)
    except Exception as error:  # the run itself is complete; say why its accounting is missing
        if notice:
            notice(f"parameter/FLOP accounting failed ({type(error).__name__}: {error}); `mtbench bench inference` retries")
        return None


def front_at(result: RunResult, results_dir: Path) -> dict[str, Any] | None:
    """The stored fixed-λ front of this run's data set and protocol, read at this run's cost: its compact FLOPs
    as % of the dense network's where the run has them (what a user pays), else its group sparsity.

    Returns ``{"axis", "at", "score", "seen", "unseen", "variants"}`` (score: ``joint`` or ``seen``; Δm of the
    front, interpolated between the fixed-λ variants' means over seeds), or None when fewer than two fixed-λ
    variants are stored or the run's cost is outside the front.
    """
    from mtbench import leaderboard

    flops = (result.inference or {}).get("flops") or {}
    if flops.get("dense"):
        axis, at = "flops", 100.0 * flops["compact"] / flops["dense"]
    elif result.sparsity is not None and result.sparsity.group_sparsity is not None:
        axis, at = "groups", 100.0 * result.sparsity.group_sparsity
    else:
        return None
    signature = result.signature()
    for group in leaderboard.collect(results_dir):
        sample = next(iter(next(iter(group.runs.values())).values()))
        if sample.signature() != signature:
            continue
        front = leaderboard.front_rows(leaderboard.rows(group))
        seen = leaderboard.front_delta_at(front, at, "seen", axis)
        if len(front) < 2 or seen is None:
            return None
        return {"axis": leaderboard.AXES[axis].label, "at": at, "score": front[0].primary_name, "seen": seen,
                "unseen": leaderboard.front_delta_at(front, at, "unseen", axis), "variants": len(front)}
    return None


def build_result(
    the_plan: RunPlan,
    source: str,
    dataset: DatasetRecord,
    outcome: Any,
    tested: Sequence[protocol.TaskScores],
    sparsity: Sparsity,
    timings: Timings,
    input_size: tuple[int, ...],
    data_path: Mapping[str, Any] | None = None,
    evaluation: Evaluation | None = None,
    training_cost: TrainingCost | None = None,
) -> RunResult:
    """The `RunResult` of a finished run (Δm and the accounting are added by `run`)."""
    info, request = the_plan.method, the_plan.request
    created = dt.datetime.now(dt.timezone.utc)
    unseen_tag = "+".join(t.name for t in the_plan.held_out) or "none"
    run_id = (
        f"{created:%Y%m%d-%H%M%S}-{dataset.name}-{info.name}-{the_plan.budget.name}-unseen-{unseen_tag}-"
        f"seed{request.seed}-{uuid.uuid4().hex[:6]}"
    )

    def typed(task: TaskSpec, values: Mapping[str, float]) -> dict[str, Metric]:
        return {m.name: Metric(float(values[m.name]), m.higher_is_better, m.in_delta_m) for m in task.metrics}

    return RunResult(
        run_id=run_id,
        created=created.isoformat(timespec="seconds"),
        method=MethodRecord(
            name=info.name,
            config=_plain(the_plan.config),
            source=source,
            summary=info.summary,
            paper=info.paper,
            link=info.link,
            deviations=info.deviations,
            kind=getattr(info.method, "kind", "mtl"),
        ),
        dataset=dataset,
        protocol=the_plan.protocol,
        seed=request.seed,
        overrides=dict(request.overrides),
        environment={**environment(the_plan.device), **({"data": dict(data_path)} if data_path is not None else {})},
        tasks={
            r.task.name: TaskOutcome(
                seen=r.seen,
                version=r.task.version,
                title=r.task.title,
                metrics=typed(r.task, r.adapted.metrics["test"]),
                finetune_seconds=r.adapted.finetune_seconds,
                eval_seconds=r.adapted.eval_seconds,
                joint=typed(r.task, r.joint.metrics["test"]) if r.joint is not None else None,
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
        },
        evaluation=evaluation,
        training_cost=training_cost,
        sparsity=sparsity,
        lam=LambdaTrace(
            start=outcome.lam_start,
            end=outcome.lam_end,
            trajectory=tuple((h["step"], h["lambda"]) for h in outcome.history if "lambda" in h),
        ),
        history=tuple(outcome.history),
        timings=timings,
        input_size=(int(input_size[0]), int(input_size[1])),
    )
