"""``mtbench sweep SPEC``: a grid of runs (methods × options × data sets × held-out tasks × budgets × seeds) on Ray.

A *sweep spec* is a TOML file (read with `tomllib`)::

    schema_version = 1
    budgets = ["quick"]
    seeds = [0, 1, 2]

    [[datasets]]
    name = "celebamask-synth"
    unseen = ["smiling"]          # held-out tasks (may be empty)
    # data_root = "data/faces"    # optional: read this folder (as `mtbench run --data-root`); relative to the spec
    # data = "stream"             # optional: how a cell holds the data, as `mtbench run --data` (auto|memory|stream),
    # memory_budget = 16          #   with --memory-budget (GiB) and --workers; they change no number a cell computes
    # workers = 4

    [methods.ew]                  # default options
    [methods.fixed-lambda]
    lam = [0.001, 0.01, 0.1]      # a grid: one cell per value; several keys give their product

    [[methods.meta-sparsity]]     # an array of tables: several grids of one method (their union)
    [[methods.meta-sparsity]]
    hypergradient = "online"

    # plugins = ["my_methods.py", "mypackage.methods"]  # optional: method plugins (files relative to the spec,
    #                                                   #   or installed modules), loaded before the names are checked

Every key and type is checked against the spec's schema (the `_SpecFile` dataclass, read by `mtbench.schema` as a
result file is), and every name before anything runs: methods against the registry, option names and values
against the method's config dataclass (`mtbench.runner.build_config`, the same parser as ``--set``), data sets and
tasks against the catalog, budgets against `mtbench.presets.BUDGETS`. A problem raises `SweepSpecError` naming the
file and the key.

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
import itertools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from mtbench import catalog
from mtbench.data.resolve import resolve_data
from mtbench.errors import (
    ConfigError,
    MtbenchError,
    PluginError,
    ResultFileError,
    SweepSpecError,
    UnknownNameError,
)
from mtbench.methods import load_plugin, methods
from mtbench.overrides import build_config, parse_set
from mtbench.preflight import SEED_LIMIT, check_output_dir, task_of
from mtbench.presets import BUDGETS
from mtbench.presets import budget as get_budget
from mtbench.result import REFERENCE_METHOD, RunResult
from mtbench.results import load_results, store
from mtbench.runner import RunRequest, execute, resolve
from mtbench.schema import MISSING, Rule, SchemaViolation, decode
from mtbench.streaming import check_data_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (installed with pytest; `pip install tomli` otherwise)
    import tomli as tomllib

SWEEP_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})
#: Characters of a cell's log the Ray task sends back.
LOG_CHARS = 200_000

# --- the spec -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetEntry:
    """One ``[[datasets]]`` entry: a data set, its held-out tasks (short names) and an optional folder to read."""

    name: str
    unseen: tuple[str, ...] = ()
    data_root: Path | None = None
    #: how its cells hold the data (`mtbench run --data`, ``--memory-budget`` GiB, ``--workers``); None: the default
    data: str | None = None
    memory_budget: float | None = None
    workers: int | None = None


@dataclass(frozen=True)
class MethodEntry:
    """One method of the spec with every option combination of its grid(s), as ``--set`` texts."""

    name: str
    variants: tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep spec."""

    path: Path
    schema_version: int
    budgets: tuple[str, ...]
    seeds: tuple[int, ...]
    datasets: tuple[DatasetEntry, ...]
    methods: tuple[MethodEntry, ...]
    #: method plugins every cell loads: absolute paths of files or folders, or installed modules' dotted names
    plugins: tuple[str, ...] = ()


# --- the spec as written: its keys and types, checked from these hints (`mtbench.schema`) ----------------------


def _each_once(values: Sequence[Any]) -> bool:
    return all(values.count(v) == 1 for v in values)


ONCE = Rule(_each_once, "each value once", problem="names a value more than once")
_SEED = Rule(
    lambda seed: 0 <= seed < SEED_LIMIT, "a seed: an integer with 0 ≤ seed < 2^32", describes=True, problem="not a seed"
)
Seed = Annotated[int, _SEED]


def _some(expected: str) -> Rule:
    """A non-empty list or table, described as ``expected``."""
    return Rule(bool, expected, describes=True, problem="is empty")


@dataclass(frozen=True)
class _DatasetTable:
    """One ``[[datasets]]`` table as written (the names in it are checked by `_dataset_entry`)."""

    name: Annotated[str, Rule(bool, 'a data set name, e.g. "nyuv2-synth" (`mtbench ls datasets`)', describes=True)]
    unseen: Annotated[tuple[str, ...], ONCE] = ()
    data_root: Annotated[str, Rule(bool, "a folder path (a non-empty string)", describes=True)] | None = None
    data: str | None = None
    memory_budget: float | None = None
    workers: int | None = None


@dataclass(frozen=True)
class _SpecFile:
    """A sweep spec as written (TOML); an unknown key is an error."""

    schema_version: int
    budgets: Annotated[tuple[str, ...], _some('a list of budget names, e.g. ["quick"]'), ONCE]
    seeds: Annotated[tuple[Seed, ...], _some("a list of seeds, e.g. [0, 1, 2]"), ONCE]
    datasets: Annotated[tuple[_DatasetTable, ...], _some("one or more [[datasets]] tables")]
    methods: Annotated[Mapping[str, Any], _some("a table of methods: one or more [methods.NAME]")]
    plugins: Annotated[tuple[str, ...], ONCE] = ()


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} {json.dumps(value, default=str)[:60]}"


class _Checker:
    """Raises `SweepSpecError` for one spec file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, **kwargs: str | None) -> SweepSpecError:
        return SweepSpecError(self.path, key, problem, **kwargs)

    def violation(self, violation: SchemaViolation) -> SweepSpecError:
        """The spec's own words for a key or value that does not fit `_SpecFile`."""
        # TOML has no null (an optional key is left out) and calls an object a table
        expected = violation.expected.removeprefix("null or ").replace("a JSON object", "a table")
        if violation.found is MISSING:
            found = "nothing"
        else:
            found = violation.found_text if violation.found_text is not None else _kind(violation.found)
        problem = f"not {expected}" if violation.mismatch else violation.problem
        return self.fail(violation.path or "(top level)", problem, expected=expected, found=found, fix=violation.fix)

    def unique(self, values: list[Any], key: str) -> None:
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise self.fail(
                key, "names a value more than once", expected="each value once", found=", ".join(repeated),
                fix="remove the repetition",
            )


def _option_text(value: Any) -> str | None:
    """A TOML scalar as ``--set`` text; None for a value that is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def _method_variants(check: _Checker, name: str, body: Any, info: Any) -> list[tuple[tuple[str, str], ...]]:
    """Every option combination of one method's grid table(s), each checked with `build_config`."""
    key = f"methods.{name}"
    if isinstance(body, dict):
        grids = [(key, body)]
    elif isinstance(body, list) and body and all(isinstance(g, dict) for g in body):
        grids = [(f"{key}[{i}]", g) for i, g in enumerate(body)]
    else:
        raise check.fail(
            key,
            "not a table of options",
            expected=f"[methods.{name}] (a table: option = value or [values]) or [[methods.{name}]] (several)",
            found=_kind(body),
        )
    variants: list[tuple[tuple[str, str], ...]] = []
    names = [f.name for f in dataclasses.fields(info.config)]
    for where, grid in grids:
        axes: list[list[tuple[str, str]]] = []
        for option, raw in grid.items():
            if option not in names:
                raise check.fail(
                    f"{where}.{option}",
                    f"unknown option {option!r} of method {name!r}",
                    expected=f"an option of {name}: {', '.join(names) or 'it has none'}",
                    found=option,
                    fix="the options are the fields of the config dataclass in the method's file",
                )
            values = raw if isinstance(raw, list) else [raw]
            if not values:
                raise check.fail(
                    f"{where}.{option}", "is an empty grid", expected="a value or a non-empty list", found="[]"
                )
            texts = []
            for index, value in enumerate(values):
                at = f"{where}.{option}" + (f"[{index}]" if isinstance(raw, list) else "")
                text = _option_text(value)
                if text is None:
                    raise check.fail(
                        at,
                        f"not a value for option {option!r}",
                        expected="a string, number or boolean",
                        found=_kind(value),
                    )
                try:
                    build_config(info.config, parse_set([f"{option}={text}"]))
                except ConfigError as error:
                    raise check.fail(
                        at,
                        f"invalid value for option {option!r} of method {name!r}",
                        expected=error.expected,
                        found=error.found,
                        fix=f"give {option} a value of its type in the method's config dataclass",
                    ) from None
                texts.append((option, text))
            check.unique(values, f"{where}.{option}")
            axes.append(texts)
        for combination in itertools.product(*axes):
            try:
                build_config(info.config, dict(combination))
            except ConfigError as error:
                invalid = f"the combination {', '.join(f'{k}={v}' for k, v in combination)} is invalid"
                raise check.fail(where, f"{invalid}: {error.problem}", **error.details()) from None
            variants.append(tuple(sorted(combination)))
    return variants


def _dataset_entry(check: _Checker, index: int, table: _DatasetTable, first_budget: str) -> DatasetEntry:
    where, name = f"datasets[{index}]", table.name
    try:
        spec = catalog.dataset(name)
    except UnknownNameError as error:
        raise check.fail(f"{where}.name", f"unknown data set {name!r}",
                         expected=f"one of {', '.join(catalog.datasets().names())}", found=error.found,
                         fix=error.fix) from None
    held_out = []
    for position, task_name in enumerate(table.unseen):
        key = f"{where}.unseen[{position}]"
        try:
            task = task_of(spec.family, task_name)
        except UnknownNameError as error:
            raise check.fail(key, error.problem, **error.details()) from None
        if not task.may_hold_out:
            raise check.fail(key, f"task {task.name!r} may not be held out", expected="a task marked --unseen yes "
                             "in `mtbench ls tasks`", found=task.name)
        held_out.append(task.name)
    check.unique(held_out, f"{where}.unseen")
    if not [t for t in spec.default_tasks if t not in held_out]:
        raise check.fail(f"{where}.unseen", "holds out every task: none is left to train on",
                         expected=f"at most {len(spec.default_tasks) - 1} of {', '.join(spec.default_tasks)}",
                         found=", ".join(held_out))
    root: Path | None = None
    if table.data_root is not None:
        root = Path(table.data_root).expanduser()
        root = root if root.is_absolute() else (check.path.parent / root).absolute()
        if root.exists():  # on a cluster the folder may exist only on the workers: checked there then
            try:
                resolved, _ = resolve_data(name, root, get_budget(first_budget))
            except MtbenchError as error:
                raise check.fail(f"{where}.data_root", f"{root} cannot serve as {name}: {error.problem}",
                                 **error.details()) from None
            if resolved.name != name:
                raise check.fail(f"{where}.data_root", f"{root} holds {resolved.name}, not {name}",
                                 expected=f"a folder of {name}", found=resolved.name,
                                 fix=f'name what the folder holds: name = "{resolved.name}"')
    data, memory_budget, workers = table.data, table.memory_budget, table.workers
    for key, options in (("data", (data or "auto", None, None)), ("memory_budget", ("auto", memory_budget, None)),
                         ("workers", ("auto", None, workers))):
        try:
            check_data_options(*options)  # as `mtbench run` checks --data, --memory-budget and --workers
        except ConfigError as error:
            raise check.fail(f"{where}.{key}", error.problem, **error.details()) from None
    return DatasetEntry(
        name=spec.name, unseen=tuple(held_out), data_root=root, data=data,
        memory_budget=float(memory_budget) if memory_budget is not None else None, workers=workers,
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; any problem raises `SweepSpecError` naming the file and the key."""
    path = Path(path)
    check = _Checker(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise check.fail("(file)", "no such file", expected="a sweep spec (TOML)", found="nothing at this path",
                         fix="check the path; leaderboard/specs/ holds examples") from None
    except (OSError, UnicodeDecodeError) as error:
        raise check.fail("(file)", "cannot read the file", expected="a readable UTF-8 TOML file",
                         found=str(error)) from None
    except tomllib.TOMLDecodeError as error:
        raise check.fail("(syntax)", "not valid TOML", expected="a TOML document", found=str(error),
                         fix="correct the syntax at the position named") from None
    if "schema_version" not in data:
        raise check.fail("schema_version", "missing", expected="schema_version = 1 as the first line",
                         found="no schema_version", fix="add `schema_version = 1` at the top of the file")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version not in SWEEP_SCHEMA_VERSIONS:
        raise check.fail("schema_version", "unknown sweep spec version",
                         expected=" or ".join(map(str, sorted(SWEEP_SCHEMA_VERSIONS))), found=_kind(version),
                         fix="write the spec for this mtbench's schema, or use a matching mtbench")
    try:
        written = decode(_SpecFile, data, strict=True)
    except SchemaViolation as violation:
        raise check.violation(violation) from None
    budgets = written.budgets
    for index, name in enumerate(budgets):
        if name not in BUDGETS:
            raise check.fail(f"budgets[{index}]", f"unknown budget {name!r}", expected=" | ".join(BUDGETS), found=name,
                             fix="name one of the budgets of `mtbench run --budget` (see the README)")
    plugins = _plugins(check, written.plugins)  # before the names: a plugin may register data sets, tasks
    datasets = [_dataset_entry(check, index, table, budgets[0]) for index, table in enumerate(written.datasets)]
    pairs = [(d.name, d.unseen) for d in datasets]
    for index, pair in enumerate(pairs):
        if pairs.index(pair) != index:
            raise check.fail(f"datasets[{index}]", "repeats an earlier entry (same data set and held-out tasks)",
                             expected="each (name, unseen) once", found=f"{pair[0]} with unseen {list(pair[1])}")
    registry = methods()
    entries = []
    for name, body in written.methods.items():
        try:
            info = registry.get(name)
        except UnknownNameError as error:
            raise check.fail(f"methods.{name}", f"unknown method {name!r}",
                             expected=f"one of {', '.join(registry.names())}", found=error.found,
                             fix=f"{error.fix} (`mtbench ls methods` lists them)") from None
        entries.append(MethodEntry(name=name, variants=tuple(_method_variants(check, name, body, info))))
    return SweepSpec(path, version, budgets, written.seeds, tuple(datasets), tuple(entries), plugins)


def _plugins(check: _Checker, value: tuple[str, ...]) -> tuple[str, ...]:
    """The spec's plugins, loaded now (so that their methods' names and options are checked like built-ins'):
    a path (relative to the spec's folder) becomes absolute; a dotted name is an installed module."""
    plugins = []
    for index, plugin in enumerate(value):
        candidate = Path(plugin).expanduser()
        candidate = candidate if candidate.is_absolute() else (check.path.parent / candidate).absolute()
        text = str(candidate) if "/" in plugin or plugin.endswith(".py") or candidate.exists() else plugin
        try:
            load_plugin(text)
        except PluginError as error:
            raise check.fail(f"plugins[{index}]", error.problem, **error.details()) from None
        plugins.append(text)
    return tuple(plugins)


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


def stored_index(results_dir: Path) -> dict[CellKey, tuple[Path, RunResult]]:
    """The results in the store by cell key (unreadable files are ignored here: their cells run again)."""
    index = {}
    for path, result in load_results(results_dir, strict=False):
        key = (
            result.method.name,
            _canonical(result.method.config),
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
        spec: a validated spec (`load_spec`).
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
