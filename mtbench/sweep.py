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

Every name is checked before anything runs: methods against the registry, option names and values against the
method's config dataclass (`mtbench.runner.build_config`, the same parser as ``--set``), data sets and tasks
against the catalog, budgets against `mtbench.presets.BUDGETS`. A problem raises `SweepSpecError` naming the file
and the key.

Each *cell* is one ``mtbench run`` subprocess inside one Ray task, with private temporary ``--results`` and
``--out`` folders on the worker; the task returns the result JSON text and the log tail, and the driver writes
the result into the one results store (atomically, with `mtbench.results.store`), so no shared file system is
needed and a killed driver never leaves a half-written result. The stl reference of each (data set, held-out
tasks, budget, seed) is a cell of its own, scheduled first; the cells that need it wait for it and receive it in
their private store, so no run trains it again.

A cell is *done*, and skipped, when the store holds a result with the same method name, resolved config
(``dataclasses.asdict(build_config(...))``), seed, data set name and protocol (`mtbench.result.Protocol`:
budget, seen and held-out tasks and their versions, steps, network …). The data set's fingerprint is not
compared (the driver may not have the data): a store made from another copy of a data set of the same name
counts as done. So a killed or failed sweep, run again, runs only what is missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbench import catalog
from mtbench.errors import ConfigError, MtbenchError, ResultFileError, SweepSpecError, UnknownNameError
from mtbench.methods import methods
from mtbench.presets import BUDGETS
from mtbench.presets import budget as get_budget
from mtbench.result import REFERENCE_METHOD, Protocol, RunResult
from mtbench.results import load_results, store
from mtbench.runner import SEED_LIMIT, build_config, parse_set, resolve_data, task_of
from mtbench.streaming import DATA_MODES, check_data_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (installed with pytest; `pip install tomli` otherwise)
    import tomli as tomllib

SWEEP_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})
TOP_KEYS = ("schema_version", "budgets", "seeds", "datasets", "methods")
DATASET_KEYS = ("name", "unseen", "data_root", "data", "memory_budget", "workers")
#: Budgets whose cells ask Ray for a GPU each (unless ``--gpus-per-cell`` says otherwise).
GPU_BUDGETS = frozenset({"paper"})
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


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} {json.dumps(value, default=str)[:60]}"


class _Checker:
    """Raises `SweepSpecError` for one spec file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str, **kwargs: str | None) -> SweepSpecError:
        return SweepSpecError(self.path, key, problem, **kwargs)

    def keys(self, table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(
                    f"{where}{key}",
                    "unknown key",
                    expected=f"one of {', '.join(allowed)}",
                    found=key,
                    fix="remove it or correct its spelling (see `mtbench sweep --help`)",
                )

    def strings(self, value: Any, key: str, what: str, *, empty: bool = False) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"not a list of {what}", expected=f'a list of {what}, e.g. ["…"]', found=_kind(value))
        if not value and not empty:
            raise self.fail(key, "is empty", expected=f"at least one {what.rstrip('s')}", found="[]")
        self.unique(value, key)
        return value

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


def _dataset_entry(check: _Checker, index: int, table: Any, first_budget: str) -> DatasetEntry:
    where = f"datasets[{index}]"
    if not isinstance(table, dict):
        raise check.fail(where, "not a table", expected='[[datasets]] with name = "…"', found=_kind(table))
    check.keys(table, DATASET_KEYS, f"{where}.")
    name = table.get("name")
    if not isinstance(name, str):
        raise check.fail(f"{where}.name", "missing or not a string", expected="a data set name, e.g. \"nyuv2-synth\"",
                         found=_kind(name) if name is not None else "nothing", fix="`mtbench ls datasets` lists them")
    try:
        spec = catalog.dataset(name)
    except UnknownNameError as error:
        raise check.fail(f"{where}.name", f"unknown data set {name!r}",
                         expected=f"one of {', '.join(catalog.datasets().names())}", found=error.found,
                         fix=error.fix) from None
    unseen = check.strings(table.get("unseen", []), f"{where}.unseen", "task names", empty=True)
    held_out = []
    for position, task_name in enumerate(unseen):
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
    root = table.get("data_root")
    if root is not None:
        if not isinstance(root, str) or not root:
            raise check.fail(f"{where}.data_root", "not a path", expected="a folder path (a string)", found=_kind(root))
        root = Path(root).expanduser()
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
    data, memory_budget, workers = table.get("data"), table.get("memory_budget"), table.get("workers")
    if data is not None and not isinstance(data, str):
        raise check.fail(f"{where}.data", "not a string", expected=" or ".join(DATA_MODES), found=_kind(data))
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float))):
        raise check.fail(f"{where}.memory_budget", "not a number", expected="GiB > 0", found=_kind(memory_budget))
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise check.fail(f"{where}.workers", "not an integer", expected="0 or more", found=_kind(workers))
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
    check.keys(data, TOP_KEYS, "")
    for key in TOP_KEYS[1:]:
        if key not in data:
            raise check.fail(key, "missing", expected=f"a {key!r} entry (see `mtbench sweep --help`)", found="nothing")
    budgets = check.strings(data["budgets"], "budgets", "budget names")
    for index, name in enumerate(budgets):
        if name not in BUDGETS:
            raise check.fail(f"budgets[{index}]", f"unknown budget {name!r}", expected=" | ".join(BUDGETS), found=name,
                             fix="name one of the budgets of `mtbench run --budget` (see the README)")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise check.fail(
            "seeds", "not a non-empty list of seeds", expected="e.g. seeds = [0, 1, 2]", found=_kind(seeds)
        )
    for index, seed in enumerate(seeds):
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
            raise check.fail(
                f"seeds[{index}]", "not a seed", expected="an integer with 0 ≤ seed < 2^32", found=_kind(seed)
            )
    check.unique(seeds, "seeds")
    tables = data["datasets"]
    if not isinstance(tables, list) or not tables:
        raise check.fail("datasets", "not a list of data set tables", expected="one or more [[datasets]] tables",
                         found=_kind(tables))
    datasets = [_dataset_entry(check, index, table, budgets[0]) for index, table in enumerate(tables)]
    pairs = [(d.name, d.unseen) for d in datasets]
    for index, pair in enumerate(pairs):
        if pairs.index(pair) != index:
            raise check.fail(f"datasets[{index}]", "repeats an earlier entry (same data set and held-out tasks)",
                             expected="each (name, unseen) once", found=f"{pair[0]} with unseen {list(pair[1])}")
    table = data["methods"]
    if not isinstance(table, dict) or not table:
        raise check.fail("methods", "not a table of methods", expected="one or more [methods.NAME] tables",
                         found=_kind(table))
    registry = methods()
    entries = []
    for name, body in table.items():
        try:
            info = registry.get(name)
        except UnknownNameError as error:
            raise check.fail(f"methods.{name}", f"unknown method {name!r}",
                             expected=f"one of {', '.join(registry.names())}", found=error.found,
                             fix=f"{error.fix} (`mtbench ls methods` lists them)") from None
        entries.append(MethodEntry(name=name, variants=tuple(_method_variants(check, name, body, info))))
    return SweepSpec(path, version, tuple(budgets), tuple(seeds), tuple(datasets), tuple(entries))


# --- cells ----------------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    method: str
    overrides: tuple[tuple[str, str], ...]
    config: str  #: the resolved config, canonical JSON
    dataset: DatasetEntry
    budget: str
    seed: int
    protocol: str  #: `Protocol.to_json` of the run, canonical JSON

    @property
    def key(self) -> tuple[str, str, int, str, str]:
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
        return self.method != REFERENCE_METHOD  # as `mtbench.runner.execute` decides

    @property
    def label(self) -> str:
        options = "[" + ",".join(f"{k}={v}" for k, v in self.overrides) + "]" if self.overrides else ""
        unseen = "+".join(self.dataset.unseen) or "none"
        return f"{self.dataset.name}/{self.budget}/unseen-{unseen}/{self.method}{options}/seed{self.seed}"

    def argv(self) -> list[str]:
        """The arguments of ``mtbench run`` (without ``--results`` and ``--out``)."""
        args = [self.method, "--dataset", self.dataset.name, "--seed", str(self.seed), "--budget", self.budget]
        if self.dataset.data_root is not None:
            args += ["--data-root", str(self.dataset.data_root)]
        for task in self.dataset.unseen:
            args += ["--unseen", task]
        if self.dataset.data is not None:
            args += ["--data", self.dataset.data]
        if self.dataset.memory_budget is not None:
            args += ["--memory-budget", repr(self.dataset.memory_budget)]
        if self.dataset.workers is not None:
            args += ["--workers", str(self.dataset.workers)]
        for key, value in self.overrides:
            args += ["--set", f"{key}={value}"]
        return args


def _protocol(entry: DatasetEntry, budget_name: str) -> str:
    """The protocol a run of ``entry`` at ``budget_name`` records (seen = the data set's default tasks − held out)."""
    spec = catalog.dataset(entry.name)
    held_out = [task_of(spec.family, name) for name in entry.unseen]
    seen = [task_of(spec.family, name) for name in spec.default_tasks if name not in entry.unseen]
    return _canonical(Protocol.of(get_budget(budget_name), seen, held_out).to_json())


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the spec, stl references first (one per data set entry, budget and seed), duplicates removed."""
    registry = methods()
    reference_config = _canonical(dataclasses.asdict(registry.get(REFERENCE_METHOD).config()))
    references: dict[tuple[str, str, int, str, str], Cell] = {}
    others: dict[tuple[str, str, int, str, str], Cell] = {}
    for budget_name in spec.budgets:
        for entry in spec.datasets:
            protocol = _protocol(entry, budget_name)
            for seed in spec.seeds:
                for method in spec.methods:
                    info = registry.get(method.name)
                    for overrides in method.variants:
                        config = _canonical(dataclasses.asdict(build_config(info.config, dict(overrides))))
                        cell = Cell(method.name, overrides, config, entry, budget_name, seed, protocol)
                        if method.name == REFERENCE_METHOD and config == reference_config:
                            cell = dataclasses.replace(cell, overrides=())
                        if cell.needs_reference:
                            reference = Cell(REFERENCE_METHOD, (), reference_config, entry, budget_name, seed, protocol)
                            references.setdefault(reference.key, reference)
                        (references if cell.is_reference else others).setdefault(cell.key, cell)
    return list(references.values()) + [c for k, c in others.items() if k not in references]


def stored_index(results_dir: Path) -> dict[tuple[str, str, int, str, str], tuple[Path, RunResult]]:
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


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child killed when the Ray worker that started it dies (Linux), else None.

    The C function is looked up here, in the parent: the hook runs between fork and exec and must do little.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    kill = int(signal.SIGKILL)

    def hook() -> None:
        prctl(1, kill, 0, 0, 0)  # PR_SET_PDEATHSIG

    return hook


def run_cell(argv: list[str], reference: tuple[str, str] | None, threads: int) -> dict[str, Any]:
    """Run ``mtbench run ARGV`` in private temporary folders; return its result files' text and its log tail.

    Args:
        argv: the ``mtbench run`` arguments (`Cell.argv`).
        reference: (path relative to a results store, JSON text) of the stl reference, copied into the private
            store first so the run finds it and never trains it; None for an stl cell.
        threads: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of the run (torch uses that many threads).

    Returns:
        ``{"returncode", "results": [JSON text, ...], "log", "seconds", "host"}``; ``results`` holds every result
        the run stored (its own; an stl reference only if it had to train one), empty when it failed.
    """
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mtbench-cell-"))
    results, log_path = work / "results", work / "run.log"
    copied = None
    try:
        if reference is not None:
            copied = results / reference[0]
            copied.parent.mkdir(parents=True, exist_ok=True)
            copied.write_text(reference[1], encoding="utf-8")
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "160",
        }
        command = [sys.executable, "-m", "mtbench", "run", *argv, "--results", str(results), "--out", str(work / "out")]
        with open(log_path, "wb") as log:
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work,
                preexec_fn=_parent_death_hook(),
            )
            try:
                code = child.wait()
            finally:  # a cancelled task takes its run with it
                if child.poll() is None:
                    child.kill()
                    child.wait()
        texts = []
        if code == 0 and results.is_dir():
            texts = [p.read_text(encoding="utf-8") for p in sorted(results.rglob("*.json")) if p != copied]
        log_text = log_path.read_bytes()[-LOG_CHARS:].decode("utf-8", errors="replace")
        return {
            "returncode": code,
            "results": texts,
            "log": log_text,
            "seconds": time.monotonic() - started,
            "host": socket.gethostname(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the driver -------------------------------------------------------------------------------------------


@dataclass
class CellOutcome:
    """What became of one cell: ``done`` (ran now), ``failed``, or ``skipped`` (already stored)."""

    cell: Cell
    status: str
    seconds: float | None = None
    delta_seen: float | None = None
    stored: Path | None = None
    reason: str = ""
    log_tail: str = ""
    log_file: Path | None = None
    warnings: list[str] = field(default_factory=list)


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


def _delta_seen(result: RunResult) -> float | None:
    from mtbench.scoring import ALL_METRICS

    seen = result.delta_m.seen if result.delta_m is not None else None
    value = seen.get(ALL_METRICS) if seen else None
    return value if isinstance(value, (int, float)) else None


def _resources(cell: Cell, cpus_per_cell: float, gpus_per_cell: float | None) -> tuple[float, float]:
    gpus = gpus_per_cell if gpus_per_cell is not None else (1.0 if cell.budget in GPU_BUDGETS else 0.0)
    return cpus_per_cell, gpus


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


class _View:
    """A rich progress view over the cells (done / running / failed / skipped, ETA), or nothing without a console."""

    def __init__(self, console: Any | None, total: int, skipped: int) -> None:
        self.console, self.total, self.skipped = console, total, skipped
        self.counts = {"done": 0, "failed": 0, "running": 0}
        self._progress: Any = None
        self._task: Any = None

    @contextmanager
    def shown(self) -> Iterator[_View]:
        if self.console is None:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console) as progress:
            self._progress = progress
            self._task = progress.add_task("sweep", total=self.total, counts=self._counts())
            yield self
            self.update()

    def _counts(self) -> str:
        c = self.counts
        return f"done {c['done']} · running {c['running']} · failed {c['failed']} · skipped {self.skipped}"

    def update(self) -> None:
        if self._progress is not None:
            finished = self.counts["done"] + self.counts["failed"]
            self._progress.update(self._task, completed=finished, counts=self._counts())

    def say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        elif self.console is not None:
            self.console.print(text, highlight=False, markup=False)


def run_sweep(
    spec: SweepSpec,
    results_dir: Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_cell: int = 1,
    gpus_per_cell: float | None = None,
    logs_dir: Path = Path("sweep-logs"),
    console: Any | None = None,
) -> SweepReport:
    """Run every cell of ``spec`` not yet in ``results_dir`` on Ray; the driver stores each result as it comes.

    Args:
        spec: a validated spec (`load_spec`).
        results_dir: the results store the driver writes (and reads to skip stored cells).
        address: a Ray cluster (``HEAD:6379``, ``auto``); None: ``$RAY_ADDRESS``, else a local instance.
        num_cpus: CPUs of a local instance (default: the core count); not with ``address``.
        cpus_per_cell: CPUs Ray reserves per cell, and the run's thread count.
        gpus_per_cell: GPUs per cell; None: 1 for ``paper`` budget cells, 0 otherwise.
        logs_dir: where the log of each failed cell is written.
        console: a rich console for the progress view and per-cell lines; None: silent.
    """
    from mtbench.runner import check_output_dir

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
            path, payload = index[cell.key]
            outcomes[cell.key] = CellOutcome(cell, "skipped", delta_seen=_delta_seen(payload), stored=path)
    pending = [c for c in cells if outcomes[c.key].status == "queued"]
    report = SweepReport([outcomes[c.key] for c in cells], results_dir)
    if not pending:
        return report
    _start_ray(address, num_cpus)
    import ray

    try:
        _drive(ray, pending, index, outcomes, results_dir, cpus_per_cell, gpus_per_cell, logs_dir,
               _View(console, len(pending), len(cells) - len(pending)))
    finally:
        ray.shutdown()
    return SweepReport([outcomes[c.key] for c in cells], results_dir)


def _drive(
    ray: Any,
    pending: list[Cell],
    index: dict[tuple[str, str, int, str, str], tuple[Path, dict[str, Any]]],
    outcomes: dict[tuple[str, str, int, str, str], CellOutcome],
    results_dir: Path,
    cpus_per_cell: int,
    gpus_per_cell: float | None,
    logs_dir: Path,
    view: _View,
) -> None:
    """Submit cells as resources free up (references first), collect results, store them, release dependants."""
    remote = ray.remote(run_cell)
    totals = ray.cluster_resources()
    needs_gpu = max(_resources(c, cpus_per_cell, gpus_per_cell)[1] for c in pending)
    if needs_gpu > totals.get("GPU", 0):
        raise ConfigError(
            "the sweep asks for GPUs the Ray cluster does not have",
            expected=f"{needs_gpu:g} GPU(s) per cell ({', '.join(sorted(GPU_BUDGETS))} budget cells ask for one)",
            found=f"{totals.get('GPU', 0):g} GPU(s) in the cluster",
            fix="run on a cluster with GPU nodes, or pass --gpus-per-cell 0 to run those cells on CPUs",
        )
    if cpus_per_cell > totals.get("CPU", 0):
        raise ConfigError("--cpus-per-cell exceeds the cluster's CPUs", expected=f"at most {totals.get('CPU', 0):g}",
                          found=str(cpus_per_cell))
    # references: group -> (relative path, JSON text), from the store or from the reference cell when it is done
    references: dict[tuple[DatasetEntry, str, int], tuple[str, str]] = {}
    for cell in pending:
        if cell.needs_reference and cell.group not in references:
            stored = next((v for k, v in index.items() if k[0] == REFERENCE_METHOD and _same_reference(k, cell)), None)
            if stored is not None:
                references[cell.group] = (stored[0].relative_to(results_dir).as_posix(), stored[0].read_text("utf-8"))
    waiting: dict[tuple[DatasetEntry, str, int], list[Cell]] = {}
    queue: deque[Cell] = deque()
    for cell in pending:  # expansion order: references first
        if cell.needs_reference and cell.group not in references:
            waiting.setdefault(cell.group, []).append(cell)
        else:
            queue.append(cell)
    running: dict[Any, tuple[Cell, float, float]] = {}
    used = [0.0, 0.0]

    def finish(cell: Cell, outcome: CellOutcome) -> None:
        outcomes[cell.key] = outcome
        view.counts[outcome.status] += 1
        seconds = f"{outcome.seconds:.1f} s" if outcome.seconds is not None else "—"
        view.say(f"{'✓' if outcome.status == 'done' else '✗'} {outcome.status:6} {cell.label} ({seconds})"
                 + (f": {outcome.reason}" if outcome.reason else ""))
        for warning in outcome.warnings:
            view.say(f"  warning: {warning}")
        if cell.is_reference:
            dependants = waiting.pop(cell.group, [])
            if outcome.status == "done":
                queue.extend(dependants)
            reason = f"its {REFERENCE_METHOD} reference ({cell.label}) failed"
            for other in dependants if outcome.status != "done" else []:
                finish(other, CellOutcome(other, "failed", reason=reason))

    with view.shown():
        while queue or running:
            for cell in list(queue):
                cpus, gpus = _resources(cell, cpus_per_cell, gpus_per_cell)
                if used[0] + cpus > totals.get("CPU", 0) or used[1] + gpus > totals.get("GPU", 0):
                    continue
                queue.remove(cell)
                reference = references.get(cell.group) if cell.needs_reference else None
                ref = remote.options(num_cpus=cpus, num_gpus=gpus).remote(cell.argv(), reference, cpus_per_cell)
                running[ref] = (cell, cpus, gpus)
                used[0], used[1] = used[0] + cpus, used[1] + gpus
            view.counts["running"] = len(running)
            view.update()
            ready = ray.wait(list(running), num_returns=1, timeout=1.0)[0] if running else []
            for ref in ready:
                cell, cpus, gpus = running.pop(ref)
                used[0], used[1] = used[0] - cpus, used[1] - gpus
                outcome = _collect(ray, ref, cell, results_dir, logs_dir)
                if outcome.status == "done" and cell.is_reference:
                    assert outcome.stored is not None
                    references[cell.group] = (
                        outcome.stored.relative_to(results_dir).as_posix(), outcome.stored.read_text("utf-8")
                    )
                view.counts["running"] = len(running)
                finish(cell, outcome)
            if queue and not running:  # nothing fits although nothing runs: the cluster changed (autoscaler)
                time.sleep(1.0)
                totals = ray.cluster_resources()


def _same_reference(key: tuple[str, str, int, str, str], cell: Cell) -> bool:
    """Whether a stored stl result (by its key) is the reference of ``cell`` (any stl config, as the runner finds)."""
    return key[2] == cell.seed and key[3] == cell.dataset.name and key[4] == cell.protocol


def _collect(ray: Any, ref: Any, cell: Cell, results_dir: Path, logs_dir: Path) -> CellOutcome:
    """The outcome of a finished Ray task: its results stored in ``results_dir``, or its failure and log."""
    try:
        answer = ray.get(ref)
    except Exception as error:  # the task itself died (worker or node lost) after Ray's retries
        return CellOutcome(cell, "failed", reason=f"the Ray task failed: {type(error).__name__}: {str(error)[-500:]}")
    outcome = CellOutcome(cell, "done", seconds=answer["seconds"], log_tail=answer["log"])
    if answer["returncode"] != 0:
        outcome.status, outcome.reason = "failed", f"mtbench run exited with {answer['returncode']} on {answer['host']}"
    elif not answer["results"]:
        outcome.status, outcome.reason = "failed", f"mtbench run stored no result on {answer['host']}"
    returned: list[RunResult] = []
    for text in answer["results"] if outcome.status == "done" else []:
        where = f"result of cell {cell.label} (from {answer['host']})"
        try:
            returned.append(RunResult.from_json(json.loads(text), where))
        except (ValueError, ResultFileError) as error:
            outcome.status, outcome.reason = "failed", f"it returned an invalid result: {error}"
            returned = []
            break
    for result in returned:
        path, _ = store(result, results_dir)  # atomic: a driver killed here leaves the old file or the new one
        if result.method.name == cell.method:
            outcome.stored, outcome.delta_seen = path, _delta_seen(result)
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


# --- reports ----------------------------------------------------------------------------------------------


def summary_table(report: SweepReport) -> Any:
    """A rich table: cell, status, seconds, Δm on the seen tasks (all-metric average, % vs stl)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sweep summary", title_justify="left")
    for column, justify in (("cell", "left"), ("status", "left"), ("seconds", "right"), ("Δm seen %", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    style = {"done": "green", "failed": "bold red", "skipped": "dim"}
    for outcome in report.outcomes:
        table.add_row(
            escape(outcome.cell.label),
            f"[{style.get(outcome.status, '')}]{outcome.status}[/]",
            f"{outcome.seconds:.1f}" if outcome.seconds is not None else "—",
            f"{outcome.delta_seen:+.2f}" if outcome.delta_seen is not None else "—",
        )
    return table


def print_report(report: SweepReport, console: Any, err_console: Any, tail_lines: int = 15) -> None:
    """The summary table, the failed cells' log tails and the one-line count."""
    from rich.markup import escape

    console.print(summary_table(report))
    for outcome in report.outcomes:
        if outcome.status != "failed":
            continue
        label, reason = escape(outcome.cell.label), escape(outcome.reason)
        err_console.print(f"[bold red]failed:[/] {label}: {reason}", highlight=False)
        if outcome.log_tail:
            lines = outcome.log_tail.rstrip().splitlines()[-tail_lines:]
            err_console.print("\n".join("    " + line for line in lines), highlight=False, markup=False)
        if outcome.log_file is not None:
            err_console.print(f"    full log: {outcome.log_file}", highlight=False, markup=False)
    console.print(report.line(), highlight=False)


def describe(spec: SweepSpec, results_dir: Path) -> list[tuple[Cell, bool]]:
    """Every cell with whether the store already holds it (for ``--dry-run``)."""
    index = stored_index(results_dir)
    return [(cell, cell.key in index) for cell in expand(spec)]

