"""A sweep spec: the grid of runs (methods × options × data sets × held-out tasks × budgets × seeds) that
``mtbench sweep`` runs (`mtbench.sweep`), read from TOML and checked before anything runs.

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
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from mtbench import catalog
from mtbench.data.resolve import resolve_data
from mtbench.errors import (
    ConfigError,
    MtbenchError,
    PluginError,
    SweepSpecError,
    UnknownNameError,
)
from mtbench.methods import load_plugin, methods, names_a_path
from mtbench.overrides import build_config, parse_set
from mtbench.preflight import SEED_LIMIT, task_of
from mtbench.presets import BUDGETS
from mtbench.presets import budget as get_budget
from mtbench.schema import MISSING, Rule, SchemaViolation, decode
from mtbench.streaming import check_data_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (installed with pytest; `pip install tomli` otherwise)
    import tomli as tomllib

SWEEP_SCHEMA_VERSIONS: frozenset[int] = frozenset({1})


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
        text = str((check.path.parent / Path(plugin).expanduser()).absolute()) if names_a_path(
            plugin, check.path.parent
        ) else plugin
        try:
            load_plugin(text)
        except PluginError as error:
            raise check.fail(f"plugins[{index}]", error.problem, **error.details()) from None
        plugins.append(text)
    return tuple(plugins)
