"""``mtbench run``: check a request into a plan, obtain its stl reference, run the recipe, record the result.

The checks live in `mtbench.preflight`, option parsing in `mtbench.overrides`, data resolution in
`mtbench.data.resolve`, the environment in `mtbench.environment`, and the run's steps in `mtbench.recipe`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbench import catalog
from mtbench.callbacks import Notice, ProgressFactory
from mtbench.data.cache import _locked
from mtbench.data.resolve import choose_data
from mtbench.environment import apply_threads
from mtbench.errors import ConfigError, OutputError, ResultFileError
from mtbench.methods import MethodInfo, methods
from mtbench.overrides import build_config
from mtbench.preflight import check_output_dir, check_seed, check_task_options, pick_device, plan_tasks
from mtbench.presets import Budget
from mtbench.presets import budget as get_budget
from mtbench.recipe import Executed, OpenedData, Reference, open_data, run
from mtbench.registry import safe_name
from mtbench.request import RUNS_DIR, RunPlan, RunRequest, plain_config
from mtbench.result import REFERENCE_METHOD, Environment, Protocol, RunResult, configuration_key, protocol_signature
from mtbench.results import (
    default_results_dir,
    find_reference,
    key_path,
    read_result,
    require_inside,
    result_path,
    store,
)
from mtbench.specs import DatasetSpec, TaskSpec
from mtbench.streaming import check_data_options


@dataclass(frozen=True)
class Resolved:
    """What a request names, resolved without checking output folders or touching data (`resolve`).

    The sweep keys its cells by it (method, resolved config, data set, seed, protocol), as the store keys results.
    """

    method: MethodInfo
    config: Any
    budget: Budget
    dataset: DatasetSpec
    data: str  #: where the data set's files come from, in words
    seen: tuple[TaskSpec, ...]
    held_out: tuple[TaskSpec, ...]
    protocol: Protocol


def resolve(request: RunRequest, notice: Notice | None = None, *, locate_data: bool = True) -> Resolved:
    """The method and its config (``--set`` applied and checked), budget, data set, tasks and protocol of a
    request; nothing is generated, loaded or written.

    ``locate_data=False`` (a sweep's driver, which may not hold the data its workers read): the data set is the one
    the request names, and where its files are is not looked up.
    """
    registry = methods(request.plugins)  # first: a plugin may register the data set, tasks or reader named below
    budget = get_budget(request.budget)
    check_seed(request.seed)
    if request.bn_batches is not None:
        if request.bn_batches < 0:
            raise ConfigError("--bn-batches must not be negative", expected="0 (no recalibration) or more",
                              found=str(request.bn_batches))
        budget = dataclasses.replace(budget, bn_recalibration_batches=request.bn_batches)
    check_task_options(catalog.dataset(request.dataset or "nyuv2").family, request.tasks, request.unseen)
    info: MethodInfo = registry.get(request.method)
    config = build_config(info.config, request.overrides)
    if locate_data or request.dataset is None:
        spec, data = choose_data(request.dataset, request.data_root, budget, notice)
    else:
        spec, data = catalog.dataset(request.dataset), "not located (resolved without the data)"
    seen, held_out = plan_tasks(spec, request.tasks, request.unseen)
    return Resolved(info, config, budget, spec, data, tuple(seen), tuple(held_out), Protocol.of(budget, seen, held_out))


def plan(request: RunRequest, notice: Notice | None = None) -> RunPlan:
    """Check a request and resolve what it names (`resolve`), without generating, loading or training anything.

    Checked here, before any long work: output folders writable, device known, method and ``--set`` valid,
    task names of the data set's family, no task repeated or both seen and held out, a ``--data-root``
    holding what ``--dataset`` names.
    """
    check_seed(request.seed)  # the cheap checks first (`resolve` repeats them): a bad name fails before any probe
    methods(request.plugins)  # a plugin may register the data set, tasks or reader the request names
    check_task_options(catalog.dataset(request.dataset or "nyuv2").family, request.tasks, request.unseen)
    device = pick_device(request.device)
    check_data_options(request.data_mode, request.memory_budget_gib, request.loader_workers)
    results_dir = request.results or default_results_dir()
    if request.out is not None:
        check_output_dir(request.out, "--out", "--out")
    else:
        check_output_dir(RUNS_DIR, "the default --out parent", "--out")
    check_output_dir(results_dir, "--results" if request.results else "the results store", "--results")
    resolved = resolve(request, notice)
    # the store paths this run (and its stl reference) will write, checked now rather than after training:
    # a data-set folder in the store that is a link leading elsewhere is refused here
    require_inside(results_dir / safe_name("dataset", resolved.dataset.name), results_dir)
    for name in (resolved.method.name, REFERENCE_METHOD):
        key_path(results_dir, resolved.dataset.name, name, request.seed, "0" * 16)
    apply_threads(request.threads, notice)  # once everything is checked
    return RunPlan(
        request=request,
        method=resolved.method,
        config=resolved.config,
        budget=resolved.budget,
        protocol=resolved.protocol,
        dataset=resolved.dataset,
        data=resolved.data,
        seen=resolved.seen,
        held_out=resolved.held_out,
        device=device,
        results_dir=results_dir,
        out=request.out,
        needs_reference=request.reference and resolved.method.name != REFERENCE_METHOD,
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


def reference_for(
    the_plan: RunPlan,
    notice: Notice | None = None,
    progress: ProgressFactory | None = None,
    *,
    data: OpenedData | None = None,
) -> Reference | None:
    """The stored stl reference of this plan's data set, protocol and seed, trained first if missing.

    None when the plan needs none. ``data``: the plan's data set already opened (`open_data`). Concurrent
    runs that need the same reference serialise on a lock file in the results store: the first trains it, the
    others wait and re-read the store. A stored reference file that cannot be read is named as corrupt before
    it is replaced.
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
        out = _reference_out(request.out)
        if notice:
            notice(_training_reference_notice(the_plan, data, signature, out))
        reference = execute(
            # the data set is resolved by now: naming it keeps the reference run from repeating notices
            dataclasses.replace(
                request, method=REFERENCE_METHOD, overrides={}, out=out, reference=False, dataset=spec.name
            ),
            notice,
            progress,
        )
    return Reference(reference.result, time.perf_counter() - start, True)


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
        notice(_replacement_notice(stored, previous, result.environment))
    return stored


def _training_reference_notice(
    the_plan: RunPlan, data: OpenedData, signature: dict[str, Any], out: Path | None
) -> str:
    """What a run says before it trains its stl reference: why (none stored, or the stored one is corrupt),
    what it costs and where it goes."""
    request, results_dir = the_plan.request, the_plan.results_dir
    reference_info = methods(request.plugins).get(REFERENCE_METHOD)
    key = configuration_key(signature, REFERENCE_METHOD, plain_config(reference_info.config()), request.seed)
    expected_file = key_path(results_dir, data.spec.name, REFERENCE_METHOD, request.seed, key)
    where = f"run folder {out}" if out is not None else f"run folder under {RUNS_DIR}/"
    problem = _why_unusable(expected_file)
    if problem is not None:
        return (f"the stored {REFERENCE_METHOD} reference {expected_file} is corrupt ({problem}): training it "
                f"again first ({where}); the new result replaces that file")
    networks = len(the_plan.seen) + len(the_plan.held_out)
    return (f"no {REFERENCE_METHOD} reference for this data set, protocol and seed yet: training it first — "
            f"{networks} single-task networks of {the_plan.budget.steps} steps each, a cost of the order of "
            f"this run's own training ({where}; stored in {results_dir} and reused by later runs)")


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


def _stored_environment(path: Path) -> Environment | None:
    """The environment of the result stored at ``path`` (an empty one when there is none), None when the file
    cannot be read as a result (the notice then says so instead of failing the run that replaces it)."""
    if not path.is_file():
        return Environment()
    try:
        return read_result(path).environment
    except ResultFileError:
        return None


def _replacement_notice(stored: Path, previous: Environment | None, current: Environment) -> str:
    """What a re-run of a stored configuration and seed says; names a thread count or CPU that changed."""
    if previous is None:
        return f"{stored} held an unreadable result; it now holds this run's"
    text = f"this configuration and seed were run before: {stored} now holds the new result (not counted twice)"
    if (previous.threads is not None and previous.threads != current.threads) or (
        previous.cpu_model is not None and previous.cpu_model != current.cpu_model
    ):
        text += (
            f"; it replaces a result made with {previous.threads if previous.threads is not None else '?'} "
            f"thread(s) on CPU {previous.cpu_model or 'unknown'} (this run: {current.threads} on "
            f"{current.cpu_model or 'unknown'}), so exact numbers may differ"
        )
    return text
