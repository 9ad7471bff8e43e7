"""What a table must hold for its numbers to be compared: `RULES`, one small function per rule.

`publish` checks every table it would change before writing anything and refuses a breach with a
`LeaderboardError` naming the file and the rule (`require_comparable`); with ``--allow-incomparable`` it
publishes anyway, and `build`, which recomputes the rules from each table's results (`breaches`), puts a
``NOT COMPARABLE`` banner on such a table's pages and on its entry in the index. A table that breaks no rule
renders as if the rules did not exist.

A rule is a function of a `Table` that yields a `Breach` per offending result or cell; its name in messages is
the function's name with hyphens (``too_few_seeds`` -> ``too-few-seeds``). A new rule is one more function in
`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from mtbench.errors import LeaderboardError
from mtbench.leaderboard.model import REFERENCE, Group, group_results
from mtbench.presets import BUDGETS
from mtbench.result import RunResult


class SpecEntry(Protocol):
    """A data set entry of a sweep spec, as the rules read it."""

    @property
    def name(self) -> str: ...

    @property
    def unseen(self) -> tuple[str, ...]: ...


class SweepSpec(Protocol):
    """What the publish rules read of a sweep spec (`mtbench.sweep_spec.SweepSpec` is one): no import of the engine."""

    @property
    def path(self) -> Path: ...

    @property
    def budgets(self) -> tuple[str, ...]: ...

    @property
    def seeds(self) -> tuple[int, ...]: ...

    @property
    def datasets(self) -> Sequence[SpecEntry]: ...

SMOKE_BUDGET = "smoke"  #: a pipeline check of a few training steps: its numbers measure nothing
MIN_SEEDS = 3  #: seeds a table cell needs unless a sweep spec says which
BANNER = "NOT COMPARABLE"
ALLOW_OPTION = "--allow-incomparable"


@dataclass(frozen=True)
class Table:
    """One table's results (`Group`) and the seeds each of its cells needs: a sweep spec's, or None for at least
    `MIN_SEEDS`. ``spec`` names the spec the seeds come from."""

    group: Group
    seeds: tuple[int, ...] | None = None
    spec: Path | None = None

    def results(self) -> Iterator[RunResult]:
        """Every result of the table, by variant and seed."""
        for _, seeds in sorted(self.group.runs.items()):
            for _, result in sorted(seeds.items()):
                yield result


@dataclass(frozen=True)
class Breach:
    """One broken rule: what is wrong (one line), as an error's expected / found / fix, and the results concerned.
    ``rule`` is filled in by `breaches`."""

    problem: str
    expected: str
    found: str
    fix: str
    results: tuple[RunResult, ...]
    rule: str = ""


Rule = Callable[[Table], Iterable[Breach]]


def rule_name(rule: Rule) -> str:
    return rule.__name__.replace("_", "-")


# --- the rules ----------------------------------------------------------------------------------------------


def smoke_budget(table: Table) -> Iterator[Breach]:
    """A smoke-budget result is a pipeline check (a few training steps), not a measurement."""
    protocol = table.group.protocol
    if protocol.budget != SMOKE_BUDGET:
        return
    measuring = ", ".join(name for name in BUDGETS if name != SMOKE_BUDGET)
    steps = protocol.budget_settings.steps
    for result in table.results():
        yield Breach(
            f"{result.method.name} seed {result.seed} ran on budget {SMOKE_BUDGET}, a pipeline check, "
            "not a measurement",
            expected=f"results of a measuring budget ({measuring})",
            found=f"budget {SMOKE_BUDGET}" + (f" ({steps} training steps)" if steps is not None else ""),
            fix="run it on a measuring budget (e.g. `mtbench run … --budget quick`) and publish that result",
            results=(result,),
        )


def no_reference(table: Table) -> Iterator[Breach]:
    """Δm is measured against stl (without --set options) of the same data set, protocol and seed."""
    reference = table.group.runs.get(REFERENCE, {})
    have = ", ".join(map(str, sorted(reference))) or "none"
    for variant, seeds in sorted(table.group.runs.items()):
        if variant == REFERENCE:
            continue
        for seed, result in sorted(seeds.items()):
            if seed not in reference:
                yield Breach(
                    f"{variant} seed {seed} has no reference: its table holds no {REFERENCE} run of seed {seed}",
                    expected=f"{REFERENCE} (without --set options) of the same data set, protocol and seed",
                    found=f"{REFERENCE} seeds in the table: {have}",
                    fix=f"publish {REFERENCE}'s result of seed {seed} with it (`mtbench run` stores it in its "
                    f"results store as <data set>/{REFERENCE}--seed{seed}--*.json)",
                    results=(result,),
                )


def too_few_seeds(table: Table) -> Iterator[Breach]:
    """A cell (variant) needs every seed of the table's sweep spec, or at least `MIN_SEEDS` without one."""
    for variant, seeds in sorted(table.group.runs.items()):
        have = sorted(seeds)
        results = tuple(seeds[seed] for seed in have)
        if table.seeds is None:
            if len(have) < MIN_SEEDS:
                yield Breach(
                    f"{variant} has {len(have)} seed(s) ({', '.join(map(str, have))}); a table cell needs at "
                    f"least {MIN_SEEDS}",
                    expected=f"at least {MIN_SEEDS} seeds per variant (or the seeds of the sweep spec given with "
                    "--spec)",
                    found=f"seeds {', '.join(map(str, have))}",
                    fix="run the missing seeds (`mtbench run … --seed N`) and publish them together",
                    results=results,
                )
            continue
        missing = sorted(set(table.seeds) - set(have))
        if missing:
            yield Breach(
                f"{variant} lacks seed(s) {', '.join(map(str, missing))} of the sweep spec {table.spec}",
                expected=f"seeds {', '.join(map(str, table.seeds))} (the spec's) for every variant",
                found=f"seeds {', '.join(map(str, have))}",
                fix=f"run the missing cells (`mtbench sweep {table.spec}` runs only what is missing) and publish "
                "them together",
                results=results,
            )


def _evaluation_protocol(result: RunResult) -> str:
    """How a result was scored, read from what it records rather than from its ``schema_version``: `store`
    writes every result under the current version (so a published schema-1 file reads back as schema 3), and
    schema 1 and 2 were scored alike (version 1 only lacked a protocol field that reading fills in exactly)."""
    return "schema 3 (mtbench/protocol.py)" if result.evaluation is not None else "schema 1–2 (old protocol)"


def mixed_versions(table: Table) -> Iterator[Breach]:
    """One table, one result schema and evaluation protocol (see `_evaluation_protocol`)."""
    kinds: dict[str, list[RunResult]] = {}
    for result in table.results():
        kinds.setdefault(_evaluation_protocol(result), []).append(result)
    if len(kinds) < 2:
        return
    fewest = min(kinds, key=lambda kind: len(kinds[kind]))
    counts = ", ".join(f"{len(found)} of {kind}" for kind, found in sorted(kinds.items()))
    yield Breach(
        f"results of {' and '.join(sorted(kinds))} in one table: scored under different evaluation protocols",
        expected="every result of a table of one schema and evaluation protocol",
        found=counts,
        fix="re-run the odd ones out with this mtbench (schema 3), or leave them out",
        results=tuple(kinds[fewest]),
    )


#: every rule, in the order their breaches are reported
RULES: tuple[Rule, ...] = (smoke_budget, no_reference, too_few_seeds, mixed_versions)


# --- checking -----------------------------------------------------------------------------------------------


def breaches(table: Table) -> list[Breach]:
    """Every breach of every rule by ``table``, in `RULES` order."""
    return [replace(breach, rule=rule_name(rule)) for rule in RULES for breach in rule(table)]


def banner(found: list[Breach]) -> str:
    """The line at the top of a table's pages: ``NOT COMPARABLE: rule (first problem; and N more); …``."""
    parts = []
    for rule in dict.fromkeys(b.rule for b in found):
        mine = [b for b in found if b.rule == rule]
        more = f"; and {len(mine) - 1} more" if len(mine) > 1 else ""
        parts.append(f"{rule} ({mine[0].problem}{more})")
    return f"{BANNER}: " + "; ".join(parts) if parts else ""


def index_mark(found: list[Breach]) -> str:
    """The mark on a table's entry in the index: ``NOT COMPARABLE: rule, rule``; empty without breaches."""
    return f"{BANNER}: " + ", ".join(dict.fromkeys(b.rule for b in found)) if found else ""


def _spec_seeds(group: Group, spec: SweepSpec | None) -> tuple[int, ...] | None:
    """The spec's seeds where ``spec`` covers ``group`` (its data set, held-out tasks and budget), else None."""
    if spec is None or group.protocol.budget not in spec.budgets:
        return None
    unseen = set(group.protocol.unseen)
    if any(entry.name == group.dataset and set(entry.unseen) == unseen for entry in spec.datasets):
        return tuple(spec.seeds)
    return None


def require_comparable(
    published: list[tuple[Path, RunResult]],
    incoming: list[tuple[Path, RunResult]],
    *,
    spec: SweepSpec | None = None,
    every_table: bool = False,
) -> None:
    """Refuse (`LeaderboardError`) a publish after which a table would break a rule.

    Checks the tables that would hold an ``incoming`` result (every table with ``every_table``), each with all
    the results it would hold: ``published`` (those that stay) and ``incoming``. The error names one file
    concerned (an incoming one where a breach has one) and the rule; its fix names `ALLOW_OPTION`.
    A ``spec`` must cover at least one of the tables checked.
    """
    new = {id(result) for _, result in incoming}
    where = {id(result): path for path, result in [*published, *incoming]}
    groups = group_results([*published, *incoming])
    checked = [g for g in groups if every_table or any(id(r) in new for s in g.runs.values() for r in s.values())]
    tables = [Table(group, _spec_seeds(group, spec), spec.path if spec else None) for group in checked]
    if spec is not None and not any(table.seeds is not None for table in tables):
        raise LeaderboardError(
            f"the sweep spec {spec.path} covers none of the tables being published",
            expected="the spec the results come from (its data sets, held-out tasks and budgets)",
            found=", ".join(table.group.slug for table in tables) or "no table",
            fix=f"pass the spec of these results, or leave --spec out (then a cell needs at least {MIN_SEEDS} seeds)",
        )
    found = [(table, breach) for table in tables for breach in breaches(table)]
    if not found:
        return
    # report what the user is publishing first: a breach that concerns an incoming result
    table, first = min(found, key=lambda pair: not any(id(r) in new for r in pair[1].results))
    result = next((r for r in first.results if id(r) in new), first.results[0])
    others = [breach for _, breach in found if breach is not first]
    more = (
        f" (and {len(others)} more breach(es) of: {', '.join(dict.fromkeys(b.rule for b in others))})" if others else ""
    )
    raise LeaderboardError(
        f"{where[id(result)]}: refused by rule {first.rule} of table {table.group.slug}: {first.problem}{more}",
        expected=first.expected,
        found=first.found,
        fix=f"{first.fix}; or publish anyway into a table marked {BANNER} with {ALLOW_OPTION}",
    )


__all__ = [
    "ALLOW_OPTION",
    "BANNER",
    "MIN_SEEDS",
    "RULES",
    "SMOKE_BUDGET",
    "Breach",
    "Rule",
    "Table",
    "banner",
    "breaches",
    "index_mark",
    "mixed_versions",
    "no_reference",
    "require_comparable",
    "rule_name",
    "smoke_budget",
    "too_few_seeds",
]
