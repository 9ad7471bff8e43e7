"""``mtbench sweep SPEC``: a grid of runs on Ray (the spec: `mtbench.sweep_spec`).

Each *cell* is a run request (`mtbench.runner.RunRequest`, sent as JSON), executed through the library
(`mtbench.runner.execute`) inside one Ray task in a fresh worker process, with private temporary results and run
folders on the worker; the task returns the results it stored (their versioned JSON form, read back into typed
`RunResult` objects by the driver) and its notices, and the driver writes each result into the one results store
(atomically, with `mtbench.results.store`), so no shared file system is needed and a killed driver never leaves a
half-written result. Plugin files must be readable at the same path on every worker (or be installed there as
a package and named by module). The stl reference of each (data set, held-out
tasks, budget, seed) is a cell of its own, scheduled first; the cells that need it wait for it and receive it in
their private store, so no run trains it again.

A cell is *done*, and skipped, when the store holds a result with the same method name, resolved config
(``dataclasses.asdict(build_config(...))``, resolved by `mtbench.runner.resolve` as a run resolves it), seed,
data set name and protocol (`mtbench.result.Protocol`:
budget, seen and held-out tasks and their versions, steps, network …). The data set's fingerprint is not
compared (the driver may not have the data): a store made from another copy of a data set of the same name
counts as done. So a killed or failed sweep, run again, runs only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mtbench.errors import (
    ConfigError,
    MtbenchError,
    ResultFileError,
)
from mtbench.methods import methods
from mtbench.preflight import check_output_dir
from mtbench.presets import budget as get_budget
from mtbench.result import REFERENCE_METHOD, RunResult
from mtbench.results import load_results, store
from mtbench.runner import RunRequest, execute, resolve
from mtbench.sweep_spec import DatasetEntry, SweepSpec

#: Characters of a cell's log the Ray task sends back.
LOG_CHARS = 200_000


# --- cells ----------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


CellKey = tuple[str, str, int, str, str]


@dataclass(frozen=True)
class Cell:
    """One run of the grid: the run request a worker executes, and what its stored result is keyed by."""

    request: RunRequest
    dataset: DatasetEntry
    config: str  #: the resolved config, canonical JSON
    protocol: str  #: `Protocol.to_json` of the run, canonical JSON

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def overrides(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.request.overrides.items()))

    @property
    def budget(self) -> str:
        return self.request.budget

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def key(self) -> CellKey:
        """What makes a stored result this cell's (see the module docstring)."""
        return (self.method, self.config, self.seed, self.dataset.name, self.protocol)

    @property
    def group(self) -> tuple[DatasetEntry, str, int]:
        """(data set entry, budget, seed): the cells of one group share one stl reference."""
        return (self.dataset, self.budget, self.seed)

    @property
    def is_reference(self) -> bool:
        return self.method == REFERENCE_METHOD and not self.overrides

    @property
    def needs_reference(self) -> bool:
        return self.method != REFERENCE_METHOD  # as `mtbench.runner.plan` decides

    @property
    def label(self) -> str:
        options = "[" + ",".join(f"{k}={v}" for k, v in self.overrides) + "]" if self.overrides else ""
        unseen = "+".join(self.dataset.unseen) or "none"
        return f"{self.dataset.name}/{self.budget}/unseen-{unseen}/{self.method}{options}/seed{self.seed}"


def cell_request(
    spec: SweepSpec, entry: DatasetEntry, budget: str, seed: int, method: str, overrides: tuple[tuple[str, str], ...]
) -> RunRequest:
    """The run request of one cell (its results and run folders are the worker's, set there)."""
    return RunRequest(
        method=method, dataset=entry.name, data_root=entry.data_root, unseen=entry.unseen, seed=seed, budget=budget,
        overrides=dict(overrides), plugins=spec.plugins, data_mode=entry.data or "auto",
        memory_budget_gib=entry.memory_budget, loader_workers=entry.workers,
    )


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the spec, stl references first (one per data set entry, budget and seed), duplicates removed.

    Each cell's config and protocol come from `mtbench.runner.resolve`, as the run itself resolves them.
    """
    known: dict[str, tuple[str, str]] = {}  # the request without its seed -> (config, protocol)

    def cell(request: RunRequest, entry: DatasetEntry) -> Cell:
        memo = _canonical({**request.to_json(), "seed": None})
        if memo not in known:
            resolved = resolve(request, locate_data=False)
            known[memo] = (_canonical(dataclasses.asdict(resolved.config)), _canonical(resolved.protocol.to_json()))
        return Cell(request, entry, *known[memo])

    references: dict[CellKey, Cell] = {}
    others: dict[CellKey, Cell] = {}
    for budget_name in spec.budgets:
        for entry in spec.datasets:
            for seed in spec.seeds:
                reference = cell(cell_request(spec, entry, budget_name, seed, REFERENCE_METHOD, ()), entry)
                for method in spec.methods:
                    for overrides in method.variants:
                        one = cell(cell_request(spec, entry, budget_name, seed, method.name, overrides), entry)
                        if one.method == REFERENCE_METHOD and one.config == reference.config:
                            one = reference  # stl with its defaults spelled out is the reference itself
                        if one.needs_reference:
                            references.setdefault(reference.key, reference)
                        (references if one.is_reference else others).setdefault(one.key, one)
    return list(references.values()) + [c for k, c in others.items() if k not in references]


def _with_new_options(method: str, config: Any) -> Any:
    """A stored config with the options its method gained since, at their defaults (the run ran as they do now;
    an option's default never changes what a method does), so an older result still answers its cell."""
    try:
        defaults = dataclasses.asdict(methods().get(method).config())
    except (MtbenchError, TypeError):  # a plugin not loaded here, or a config without defaults: as stored
        return config
    return {**defaults, **config} if isinstance(config, dict) else config


def stored_index(results_dir: Path) -> dict[CellKey, tuple[Path, RunResult]]:
    """The results in the store by cell key (unreadable files are ignored here: their cells run again)."""
    index = {}
    for path, result in load_results(results_dir, strict=False):
        key = (
            result.method.name,
            _canonical(_with_new_options(result.method.name, result.method.config)),
            result.seed,
            result.dataset.name,
            _canonical(result.protocol.to_json()),
        )
        index[key] = (path, result)
    return index


# --- one cell, inside a Ray task --------------------------------------------------------------------------


@dataclass(frozen=True)
class CellAnswer:
    """What a worker sends back for one cell.

    Attributes:
        results: the versioned JSON form (`RunResult.to_json`) of every result the run stored: its own, and an stl
            reference only if it had to train one; empty when it failed. The driver reads them with
            `RunResult.from_json`, so a worker of another mtbench version is caught there.
        log: the run's notices (and, when it failed, the error or traceback), at most `LOG_CHARS` characters.
        error: why the run failed (the typed error's text, or the exception), None when it succeeded.
    """

    results: tuple[dict[str, Any], ...]
    log: str
    seconds: float
    host: str
    error: str | None = None


def run_cell(request: dict[str, Any], reference: tuple[str, str] | None) -> CellAnswer:
    """Execute one cell's run request through the library, in private temporary folders.

    Args:
        request: the cell's `RunRequest` as JSON (`RunRequest.to_json`); its ``results`` and ``out`` are set here.
        reference: (path relative to a results store, JSON text) of the stl reference, copied into the private
            store first so the run finds it and never trains it; None for an stl cell.
    """
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mtbench-cell-"))
    results, lines = work / "results", []
    copied = None
    try:
        if reference is not None:
            copied = results / reference[0]
            copied.parent.mkdir(parents=True, exist_ok=True)
            copied.write_text(reference[1], encoding="utf-8")
        the_request = RunRequest.from_json({**request, "results": str(results), "out": str(work / "out")})
        error = None
        try:
            execute(the_request, notice=lines.append)
        except MtbenchError as failure:  # a typed error says what was expected and what to do
            error = f"{type(failure).__name__}: {failure}"
        except Exception as failure:  # a bug: the traceback goes into the cell's log
            error = f"{type(failure).__name__}: {failure}"
            lines.append(traceback.format_exc())
        if error is not None:
            lines.append(error)
        payloads = () if error is not None or not results.is_dir() else tuple(
            json.loads(p.read_text(encoding="utf-8")) for p in sorted(results.rglob("*.json")) if p != copied
        )
        return CellAnswer(payloads, "\n".join(lines)[-LOG_CHARS:], time.monotonic() - started, socket.gethostname(),
                          error)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the driver -------------------------------------------------------------------------------------------


@dataclass
class CellOutcome:
    """What became of one cell: ``done`` (ran now), ``failed``, or ``skipped`` (already stored)."""

    cell: Cell
    status: str
    seconds: float | None = None
    result: RunResult | None = None
    stored: Path | None = None
    reason: str = ""
    log_tail: str = ""
    log_file: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def delta_seen(self) -> float | None:
        """Δm on the seen tasks (all-metric average, % vs stl) of the cell's result, if it has one."""
        delta = self.result.delta_m if self.result is not None else None
        return delta.overall("seen") if delta is not None else None


@dataclass
class SweepReport:
    """Every cell's outcome, in expansion order."""

    outcomes: list[CellOutcome]
    results_dir: Path

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def line(self) -> str:
        return (
            f"sweep: {len(self.outcomes)} cells — {self.count('done')} done, {self.count('failed')} failed, "
            f"{self.count('skipped')} skipped (already in {self.results_dir})"
        )


@dataclass(frozen=True)
class Counts:
    """Where a sweep stands: cells to run in all, and how many are done, failed, running; skipped (stored)."""

    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    running: int = 0


class SweepObserver(Protocol):
    """What a sweep tells its caller as it goes (the CLI draws it; `None` observes nothing)."""

    def started(self, counts: Counts) -> None: ...

    def updated(self, counts: Counts) -> None: ...

    def finished(self, outcome: CellOutcome, counts: Counts) -> None: ...

    def stopped(self) -> None: ...


def _gpus(cell: Cell, gpus_per_cell: float | None) -> float:
    if gpus_per_cell is not None:
        return gpus_per_cell
    return 1.0 if get_budget(cell.budget).device == "gpu" else 0.0


def _start_ray(address: str | None, num_cpus: int | None) -> None:
    """Connect to the Ray cluster at ``address``, else start a local instance of ``num_cpus`` CPUs."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "Ray is not installed", expected="the ray package", found="none", fix="pip install 'ray>=2.9'"
        ) from None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
    except Exception as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(
            f"cannot start or reach {where}",
            expected="a running Ray head (`ray start --head`) at --address, or none for a local instance",
            found=f"{type(error).__name__}: {error}",
            fix="check the address and that the head node runs the same Ray version",
        ) from None


def run_sweep(
    spec: SweepSpec,
    results_dir: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_cell: int = 1,
    gpus_per_cell: float | None = None,
    logs_dir: Path = Path("sweep-logs"),
    observer: SweepObserver | None = None,
) -> SweepReport:
    """Run every cell of ``spec`` not yet in ``results_dir`` on Ray; the driver stores each result as it comes.

    Args:
        spec: a validated spec (`mtbench.sweep_spec.load_spec`).
        results_dir: the results store the driver writes (and reads to skip stored cells).
        address: a Ray cluster (``HEAD:6379``, ``auto``); None: ``$RAY_ADDRESS``, else a local instance.
        num_cpus: CPUs of a local instance (default: the core count); not with ``address``.
        cpus_per_cell: CPUs Ray reserves per cell, and the run's thread count.
        gpus_per_cell: GPUs per cell; None: 1 for cells of a GPU budget (`Budget.device`), 0 otherwise.
        logs_dir: where the log of each failed cell is written.
        observer: told of the progress and of every finished cell (the CLI's view); None: silent.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and num_cpus is not None:
        raise ConfigError(
            "--num-cpus applies to a local Ray instance only",
            expected="--num-cpus without --address (or RAY_ADDRESS)",
            found=f"--num-cpus {num_cpus} with address {address}",
            fix="the cluster's nodes set their CPUs with `ray start --num-cpus`",
        )
    if cpus_per_cell < 1:
        raise ConfigError("--cpus-per-cell must be at least 1", expected="an integer ≥ 1", found=str(cpus_per_cell))
    check_output_dir(results_dir, "--results", "--results")
    cells = expand(spec)
    index = stored_index(results_dir)
    outcomes = {cell.key: CellOutcome(cell, "queued") for cell in cells}
    for cell in cells:
        if cell.key in index:
            path, stored = index[cell.key]
            outcomes[cell.key] = CellOutcome(cell, "skipped", result=stored, stored=path)
    pending = [c for c in cells if outcomes[c.key].status == "queued"]
    if pending:
        _start_ray(address, num_cpus)
        import ray

        try:
            _Driver(ray, pending, index, outcomes, results_dir, cpus_per_cell, gpus_per_cell, logs_dir,
                    observer, len(cells) - len(pending)).drive()
        finally:
            ray.shutdown()
    return SweepReport([outcomes[c.key] for c in cells], results_dir)


class _Driver:
    """Submits cells as resources free up (references first), collects and stores results, releases dependants."""

    def __init__(
        self, ray: Any, pending: list[Cell], index: dict[CellKey, tuple[Path, RunResult]],
        outcomes: dict[CellKey, CellOutcome], results_dir: Path, cpus_per_cell: int, gpus_per_cell: float | None,
        logs_dir: Path, observer: SweepObserver | None, skipped: int,
    ) -> None:
        self.ray, self.outcomes, self.results_dir, self.logs_dir = ray, outcomes, results_dir, logs_dir
        self.cpus, self.gpus_per_cell, self.observer = cpus_per_cell, gpus_per_cell, observer
        self.counts = Counts(total=len(pending), skipped=skipped)
        self.remote = ray.remote(max_calls=1)(run_cell)  # a fresh worker process per cell: nothing leaks between
        self.totals = ray.cluster_resources()
        self._check_resources(pending)
        # group -> (relative path, JSON text) of its stl reference, from the store or from its finished cell
        self.references: dict[tuple[DatasetEntry, str, int], tuple[str, str]] = {}
        for cell in pending:
            if cell.needs_reference and cell.group not in self.references:
                stored = next((v for k, v in index.items() if k[0] == REFERENCE_METHOD and _same_reference(k, cell)),
                              None)
                if stored is not None:
                    self.references[cell.group] = (stored[0].relative_to(results_dir).as_posix(),
                                                   stored[0].read_text("utf-8"))
        self.waiting: dict[tuple[DatasetEntry, str, int], list[Cell]] = {}
        self.queue: deque[Cell] = deque()
        for cell in pending:  # expansion order: references first
            if cell.needs_reference and cell.group not in self.references:
                self.waiting.setdefault(cell.group, []).append(cell)
            else:
                self.queue.append(cell)
        self.running: dict[Any, tuple[Cell, float, float]] = {}
        self.used = [0.0, 0.0]

    def _check_resources(self, pending: list[Cell]) -> None:
        needs_gpu = max(_gpus(c, self.gpus_per_cell) for c in pending)
        if needs_gpu > self.totals.get("GPU", 0):
            gpu_budgets = sorted({c.budget for c in pending if _gpus(c, self.gpus_per_cell) > 0})
            raise ConfigError(
                "the sweep asks for GPUs the Ray cluster does not have",
                expected=f"{needs_gpu:g} GPU(s) per cell ({', '.join(gpu_budgets)} budget cells ask for one)",
                found=f"{self.totals.get('GPU', 0):g} GPU(s) in the cluster",
                fix="run on a cluster with GPU nodes, or pass --gpus-per-cell 0 to run those cells on CPUs",
            )
        if self.cpus > self.totals.get("CPU", 0):
            raise ConfigError("--cpus-per-cell exceeds the cluster's CPUs",
                              expected=f"at most {self.totals.get('CPU', 0):g}", found=str(self.cpus))

    def _tell(self, **changes: int) -> None:
        self.counts = dataclasses.replace(self.counts, **changes)
        if self.observer is not None:
            self.observer.updated(self.counts)

    def _finish(self, cell: Cell, outcome: CellOutcome) -> None:
        self.outcomes[cell.key] = outcome
        self.counts = dataclasses.replace(self.counts, **{outcome.status: getattr(self.counts, outcome.status) + 1})
        if self.observer is not None:
            self.observer.finished(outcome, self.counts)
        if cell.is_reference:
            dependants = self.waiting.pop(cell.group, [])
            if outcome.status == "done":
                self.queue.extend(dependants)
                return
            reason = f"its {REFERENCE_METHOD} reference ({cell.label}) failed"
            for other in dependants:
                self._finish(other, CellOutcome(other, "failed", reason=reason))

    def _submit(self) -> None:
        for cell in list(self.queue):
            cpus, gpus = float(self.cpus), _gpus(cell, self.gpus_per_cell)
            if self.used[0] + cpus > self.totals.get("CPU", 0) or self.used[1] + gpus > self.totals.get("GPU", 0):
                continue
            self.queue.remove(cell)
            reference = self.references.get(cell.group) if cell.needs_reference else None
            threads = str(self.cpus)
            ref = self.remote.options(
                num_cpus=cpus, num_gpus=gpus,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}},
            ).remote(dataclasses.replace(cell.request, threads=self.cpus).to_json(), reference)
            self.running[ref] = (cell, cpus, gpus)
            self.used[0], self.used[1] = self.used[0] + cpus, self.used[1] + gpus

    def drive(self) -> None:
        if self.observer is not None:
            self.observer.started(self.counts)
        try:
            while self.queue or self.running:
                self._submit()
                self._tell(running=len(self.running))
                ready = self.ray.wait(list(self.running), num_returns=1, timeout=1.0)[0] if self.running else []
                for ref in ready:
                    cell, cpus, gpus = self.running.pop(ref)
                    self.used[0], self.used[1] = self.used[0] - cpus, self.used[1] - gpus
                    outcome = _collect(self.ray, ref, cell, self.results_dir, self.logs_dir)
                    if outcome.status == "done" and cell.is_reference:
                        assert outcome.stored is not None
                        self.references[cell.group] = (
                            outcome.stored.relative_to(self.results_dir).as_posix(),
                            outcome.stored.read_text("utf-8"),
                        )
                    self.counts = dataclasses.replace(self.counts, running=len(self.running))
                    self._finish(cell, outcome)
                if self.queue and not self.running:  # nothing fits although nothing runs: the cluster changed
                    time.sleep(1.0)
                    self.totals = self.ray.cluster_resources()
        finally:
            if self.observer is not None:
                self.observer.stopped()


def _same_reference(key: CellKey, cell: Cell) -> bool:
    """Whether a stored stl result (by its key) is the reference of ``cell`` (any stl config, as the runner finds)."""
    return key[2] == cell.seed and key[3] == cell.dataset.name and key[4] == cell.protocol


def _collect(ray: Any, ref: Any, cell: Cell, results_dir: Path, logs_dir: Path) -> CellOutcome:
    """The outcome of a finished Ray task: its results stored in ``results_dir``, or its failure and log."""
    try:
        answer: CellAnswer = ray.get(ref)
    except Exception as error:  # the task itself died (worker or node lost) after Ray's retries
        return CellOutcome(cell, "failed", reason=f"the Ray task failed: {type(error).__name__}: {str(error)[-500:]}")
    outcome = CellOutcome(cell, "done", seconds=answer.seconds, log_tail=answer.log)
    if answer.error is not None:
        outcome.status, outcome.reason = "failed", f"the run failed on {answer.host}: {answer.error[-500:]}"
    elif not answer.results:
        outcome.status, outcome.reason = "failed", f"the run stored no result on {answer.host}"
    returned: list[RunResult] = []
    for payload in answer.results if outcome.status == "done" else ():
        try:
            returned.append(RunResult.from_json(payload, f"result of cell {cell.label} (from {answer.host})"))
        except (ValueError, ResultFileError) as error:
            outcome.status, outcome.reason = "failed", f"it returned an invalid result: {error}"
            returned = []
            break
    for result in returned:
        path, _ = store(result, results_dir)  # atomic: a driver killed here leaves the old file or the new one
        if result.method.name == cell.method:
            outcome.stored, outcome.result = path, result
            if result.timings is not None and result.timings.reference_trained:
                outcome.warnings.append(
                    f"it trained its own {REFERENCE_METHOD} reference: the worker's data differ (fingerprint) from "
                    "the data the sweep's reference was trained on"
                )
    if outcome.status == "done" and outcome.stored is None:
        outcome.status, outcome.reason = "failed", f"none of its results is a {cell.method} result"
    if outcome.status == "done":
        outcome.log_tail = ""  # kept for failed cells only
    elif outcome.log_tail:
        logs_dir.mkdir(parents=True, exist_ok=True)
        name = cell.label.replace("/", "--").replace("[", "-").replace("]", "").replace(",", "-")
        outcome.log_file = logs_dir / f"{name}.log"
        outcome.log_file.write_text(outcome.log_tail, encoding="utf-8")
    return outcome


def describe(spec: SweepSpec, results_dir: Path) -> list[tuple[Cell, bool]]:
    """Every cell with whether the store already holds it (for ``--dry-run``)."""
    index = stored_index(results_dir)
    return [(cell, cell.key in index) for cell in expand(spec)]
