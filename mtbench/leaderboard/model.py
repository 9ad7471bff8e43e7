"""What a table holds, before it is written: results grouped by data set and protocol (`Group`), one `Row` per
method variant with a `Cell` (one value per seed) for every number, Δm against a fixed or a per-seed reference
(`Reference`), paired comparisons with `ew` and paired ranks (`mtbench.stats`)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mtbench.errors import LeaderboardError
from mtbench.result import REFERENCE_METHOD, Protocol, RunResult
from mtbench.results import load_results
from mtbench.scoring import ALL_METRICS, RoleScores, ScoringError, delta_against, mean_scores, role_scores
from mtbench.stats import Interval, Paired, Rank, confidence_interval, paired_comparison, paired_ranks, sample_std

REFERENCE = REFERENCE_METHOD  # the Δm reference: the variant label of stl run without overrides
COMPARE_WITH = "ew"  # every row's paired difference is to this variant
DENSE_BELOW_PCT = 0.5  # a variant of a dense-family method with less group sparsity than this is drawn dense
#: how Δm's reference is taken: the mean over seeds of stl's metrics (the literature's convention), or stl's run
#: of the same seed
REFERENCE_MODES = ("fixed", "per-seed")


@dataclass
class Cell:
    """One number of a row over its seeds: ``values[i]`` belongs to ``seeds[i]`` (where seeds are known)."""

    values: list[float]
    complete: bool = True
    seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values and self.complete else None

    @property
    def n(self) -> int | None:
        """The number of values behind the mean; None where the mean is blank."""
        return len(self.values) if self.values and self.complete else None

    @property
    def std(self) -> float | None:
        """Sample std over seeds; None where the mean is blank or with a single seed (undefined, not 0)."""
        return sample_std(self.values) if self.values and self.complete else None

    @property
    def interval(self) -> Interval | None:
        """Mean and 95 % CI half-width (`mtbench.stats.confidence_interval`); None where the mean is blank.

        With a single seed the interval exists but its ``half_width`` (and ``low``/``high``) is None.
        """
        return confidence_interval(self.values) if self.values and self.complete else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """(low, high) of the 95 % CI; None where it is undefined (blank mean or a single seed)."""
        interval = self.interval
        if interval is None or interval.half_width is None:
            return None
        return interval.low, interval.high

    @property
    def half_width(self) -> float | None:
        interval = self.interval
        return None if interval is None else interval.half_width

    @property
    def by_seed(self) -> dict[int, float]:
        """seed -> value, for pairing; empty where the cell is blank or its seeds are unknown."""
        if not self.complete or len(self.seeds) != len(self.values):
            return {}
        return dict(zip(self.seeds, self.values))

    @property
    def split_values(self) -> bool:
        """Whether the seeds' values are bimodal or hold outliers, so that a t interval misdescribes them.

        With n ≥ 3 values: the widest gap between neighbouring sorted values is more than 2/3 of their range
        (evenly spread values have gaps of 1/(n − 1) of it; two clusters have one gap that is nearly all of it),
        or a value lies more than 5 scaled median absolute deviations (1.4826 · MAD, the normal σ) from the
        median (one or two values far from the rest; 5 rather than the usual 3 because the MAD of 5 seeds is
        itself noisy, and 3 flagged plain spread)."""
        values = sorted(self.values)
        if not self.complete or len(values) < 3 or values[-1] == values[0]:
            return False
        widest = max(b - a for a, b in zip(values, values[1:]))
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        return widest > 2 / 3 * (values[-1] - values[0]) or any(abs(v - median) > 5 * 1.4826 * mad for v in values)

    def text(self, digits: int = 4) -> str:
        """``mean ± 95 % CI half-width``; the mean alone with one seed (no interval); blank without a mean."""
        interval = self.interval
        if interval is None:
            return ""
        if interval.half_width is None:
            return fixed(interval.mean, digits)
        return f"{fixed(interval.mean, digits)} ± {interval.half_width:.{digits}f}"

    def text_with_range(self, digits: int = 4) -> str:
        """`text`, with the seeds' min–max beside it where the values are split (`split_values`)."""
        text = self.text(digits)
        if text and self.split_values:
            text += f" (seeds {fixed(min(self.values), digits)} … {fixed(max(self.values), digits)})"
        return text


@dataclass
class Group:
    """The results of one data set and protocol."""

    slug: str
    dataset: str
    synthetic: bool
    protocol: Protocol
    runs: dict[str, dict[int, RunResult]] = field(default_factory=dict)  # variant -> seed -> result
    bases: dict[str, str] = field(default_factory=dict)  # variant label -> plain method name
    reference_mode: str = "fixed"  # one of REFERENCE_MODES

    @property
    def metric_columns(self) -> list[tuple[str, str, bool, bool]]:
        """(task, metric, higher_is_better, seen) in task order: seen tasks first."""
        columns: dict[tuple[str, str], tuple[bool, bool]] = {}
        for seeds in self.runs.values():
            for result in seeds.values():
                for task, entry in result.tasks.items():
                    for metric, value in entry.metrics.items():
                        columns.setdefault((task, metric), (value.higher_is_better, entry.seen))
        order = [*self.protocol.seen, *self.protocol.unseen]
        keys = sorted(columns, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), 0))
        return [(task, metric, *columns[(task, metric)]) for task, metric in keys]

    @property
    def scored_jointly(self) -> bool:
        """Whether the results hold joint scores (schema 3, `mtbench.protocol`): the table then ranks on Δm joint
        and shows training compute and dead layers."""
        results = (r for seeds in self.runs.values() for r in seeds.values())
        return any(task.joint is not None for r in results for task in r.tasks.values())

    @property
    def outside_delta_m(self) -> set[tuple[str, str]]:
        """(task, metric) pairs that the results mark as left out of Δm."""
        return {
            (task, metric)
            for seeds in self.runs.values()
            for result in seeds.values()
            for task, entry in result.tasks.items()
            for metric, value in entry.metrics.items()
            if not value.in_delta_m
        }

    @cached_property
    def reference(self) -> Reference:
        return Reference(self.reference_mode, self.runs.get(REFERENCE, {}))


def _slug(dataset: str, protocol: Protocol, signature: dict[str, Any]) -> str:
    unseen = "+".join(protocol.unseen) or "none"
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    return f"{dataset}--{protocol.budget}--unseen-{unseen}--{digest}"


def variant_label(method: str, overrides: dict[str, Any] | None) -> str:
    """``method`` alone without overrides, else ``method (k1=v1, k2=v2)`` with the keys sorted."""
    if not overrides:
        return method
    return f"{method} ({', '.join(f'{key}={overrides[key]}' for key in sorted(overrides))})"


def collect(results_dir: Path, *, strict: bool = False, reference: str = "fixed") -> list[Group]:
    """Group the stored results by data set, protocol signature and variant; the newest run of a seed wins.

    ``strict`` (what `build` and `publish` use): every file must be a valid result (and match the manifest
    where there is one), else a `ResultFileError` naming it. Not strict by default because `mtbench run`
    reads its local store this way to show the fixed-λ front after a finished run (``runner.front_at``),
    which must not fail over an unrelated broken file; invalid files are then left out of that display.
    ``reference`` (one of `REFERENCE_MODES`) is how the groups' Δm are taken.
    """
    return group_results(load_results(results_dir, strict=strict), strict=strict, reference=reference)


def group_results(
    results: Iterable[tuple[Path, RunResult]], *, strict: bool = False, reference: str = "fixed"
) -> list[Group]:
    """The tables of these (path, result) pairs (see `collect`): also what `publish` checks, in memory, before
    it writes anything (`mtbench.leaderboard.rules`)."""
    if reference not in REFERENCE_MODES:
        raise LeaderboardError(
            f"unknown Δm reference {reference!r}", expected=" or ".join(REFERENCE_MODES), found=reference
        )
    groups: dict[str, Group] = {}
    threads: dict[str, tuple[Any, Path]] = {}  # slug -> (thread count, first file with it)
    # a variant is a method and its resolved config: runs of one config whose --set options differ only by
    # spelling a default (`--set hypergradient=maml` or nothing) are one row, labelled by the options all share
    variants: dict[tuple[str, str, str], dict[int, RunResult]] = {}
    for path, result in results:
        protocol = result.protocol
        slug = _slug(result.dataset.name, protocol, result.signature())
        count = result.threads
        first = threads.setdefault(slug, (count, path))
        if strict and count != first[0]:
            # a seed's numbers depend on the CPU thread count: one table, one thread count
            raise LeaderboardError(
                f"{path}: made with {count} CPU thread(s), but {first[1]} in the same table with {first[0]}",
                expected="one thread count for every result of a table (the published runs use 1)",
                found=f"{count} and {first[0]}",
                fix="re-run the odd one out with the table's thread count (OMP_NUM_THREADS), or remove it",
            )
        groups.setdefault(
            slug, Group(slug, result.dataset.name, result.dataset.synthetic, protocol, reference_mode=reference)
        )
        config = json.dumps(result.method.config, sort_keys=True)
        seeds = variants.setdefault((slug, result.method.name, config), {})
        if result.seed not in seeds or result.created > seeds[result.seed].created:
            seeds[result.seed] = result
    for (slug, method, _), seeds in sorted(variants.items()):
        shared = set.intersection(*(set(r.overrides.items()) for r in seeds.values()))
        label = variant_label(method, dict(shared))
        groups[slug].bases[label] = method
        groups[slug].runs.setdefault(label, {}).update(seeds)
    return [groups[k] for k in sorted(groups)]


class Reference:
    """Δm's reference of one table: stl's metrics averaged over its seeds (``fixed``), or stl's run of the same
    seed (``per-seed``). A fixed reference adds no noise of its own to a row and gives stl's row a real interval."""

    def __init__(self, mode: str, runs: dict[int, RunResult]) -> None:
        self.mode = mode
        self.runs = runs
        self._fixed: dict[tuple[bool, str, str], RoleScores | None] = {}

    def scores(self, seed: int, seen: bool, score: str, split: str) -> RoleScores | None:
        """The reference's Δm inputs for ``seed``; None where there are none (no stl run, or one lacks the score)."""
        if self.mode == "per-seed":
            run = self.runs.get(seed)
            return None if run is None else role_scores(run, seen, score, split)
        key = (seen, score, split)
        if key not in self._fixed:
            each = [role_scores(run, seen, score, split) for _, run in sorted(self.runs.items())]
            usable = bool(each) and all(s is not None for s in each)
            try:
                self._fixed[key] = mean_scores(each) if usable else None  # type: ignore[arg-type]
            except ScoringError:
                self._fixed[key] = None
        return self._fixed[key]

    @property
    def description(self) -> str:
        if self.mode == "per-seed":
            return "stl's run of the same seed and protocol (paired reference; its noise enters every row)"
        seeds = ", ".join(str(s) for s in sorted(self.runs)) or "none"
        return f"the mean over stl's seeds ({seeds}) of each metric, fixed for the whole table"


def delta_cells(group: Group, method: str, score: str = "adapted", split: str = "test") -> tuple[Cell, Cell]:
    """Δm seen and held out of a variant's seeds against the group's `Reference`, under ``score`` on ``split``."""
    seen, unseen = Cell([]), Cell([])
    for seed, result in sorted(group.runs[method].items()):
        for cell, role in ((seen, True), (unseen, False)):
            mine = role_scores(result, role, score, split)
            if mine is None:
                if score == "joint" and not role:
                    continue  # held-out tasks have no joint score
                if group.protocol.seen if role else group.protocol.unseen:
                    cell.complete = False
                continue
            reference = group.reference.scores(seed, role, score, split)
            if reference is None:
                cell.complete = False
                continue
            try:
                values = delta_against(mine, {k: v for k, v in reference.items() if k in mine})
            except ScoringError:
                cell.complete = False
                continue
            cell.values.append(values[ALL_METRICS])
            cell.seeds.append(seed)
    for cell, role in ((seen, "seen"), (unseen, "unseen")):
        if not getattr(group.protocol, role):
            cell.complete = False
    return seen, unseen


@dataclass
class Row:
    method: str  # the variant label, e.g. "fixed-lambda (lam=0.01)"
    seeds: list[int]
    metrics: dict[tuple[str, str], Cell]
    delta_seen: Cell
    delta_unseen: Cell
    sparsity: Cell  # group sparsity of the shared backbone, %
    params: Cell  # compact parameters
    gflops: Cell  # compact GFLOPs per image
    layers: list[tuple[str, float]]
    base: str = ""  # the plain method name, e.g. "fixed-lambda"
    family: str = "dense"  # the method's `MethodInfo.family`: dense, sparse or front (its variants trace the front)
    lam_start: Cell = field(default_factory=lambda: Cell([]))
    lam_end: Cell = field(default_factory=lambda: Cell([]))
    rank: Rank | None = None  # paired rank on the primary Δm (`rank_rows`)
    delta_joint: Cell = field(default_factory=lambda: Cell([]))  # the trained network's Δm, seen tasks (schema 3)
    delta_joint_val: Cell = field(default_factory=lambda: Cell([]))  # the same on the validation split
    delta_seen_val: Cell = field(default_factory=lambda: Cell([]))  # Δm seen (adapted) on the validation split
    train_flops: Cell = field(default_factory=lambda: Cell([]))  # training FLOPs per run
    dead: list[int] = field(default_factory=list)  # per seed: dead shared convs at the end of training
    flops_pct: Cell = field(default_factory=lambda: Cell([]))  # compact FLOPs, % of the dense network's
    params_pct: Cell = field(default_factory=lambda: Cell([]))  # compact parameters, % of the dense network's
    vs_ew: Paired | None = None  # paired difference of the primary Δm to ew's
    options: dict[str, Any] = field(default_factory=dict)  # the --set options every seed shares (the label's)

    @property
    def primary(self) -> Cell:
        """The Δm a row is ranked on: joint where the results have it (schema 3), else adapted (Δm seen)."""
        return self.delta_joint if self.delta_joint.values else self.delta_seen

    @property
    def primary_name(self) -> str:
        """``joint`` or ``seen``: what `primary` is, for labels."""
        return "joint" if self.delta_joint.values else "seen"

    @property
    def rank_text(self) -> str:
        """``"3"``, ``"3="`` when tied, blank without a rank."""
        return "" if self.rank is None else self.rank.text

    @property
    def lam_text(self) -> str:
        """``start → end`` with 2 significant digits; blank for a method without λ."""
        start, end = self.lam_start.mean, self.lam_end.mean
        if start is None or end is None:
            return ""
        return f"{significant(start)} → {significant(end)}"


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, without the sign of a value that rounds to zero (``-0.00``)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def signed(value: float, digits: int) -> str:
    """``value`` with its sign and ``digits`` decimals; ``+0.00`` for a value that rounds to zero."""
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text


def significant(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}g}"


def lambda_summary(value: float | list[float] | None) -> float | None:
    """One number for a λ: a global λ as is, a per-layer list as its geometric mean (0 if a layer has λ ≤ 0)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        layers = [float(v) for v in value]
        if not layers:
            return None
        if min(layers) <= 0:
            return 0.0
        return math.exp(sum(math.log(v) for v in layers) / len(layers))
    return float(value)


def method_family(result: RunResult) -> str:
    """The result's method family (dense, sparse or front): as recorded; for results written before it was
    recorded, the registered method's, and ``dense`` for a method not registered here (as the tables treated
    every method but fixed-λ, meta-sparsity, meta-dense and prune then: the plot still draws a measurably sparse
    row as sparse, and only a ``front`` method's variants trace the front)."""
    if result.method.family is not None:
        return result.method.family
    from mtbench.methods import methods

    registry = methods()
    return registry.get(result.method.name).family if result.method.name in registry else "dense"


def _seed_cell(seeds: dict[int, RunResult], value: Any) -> Cell:
    """``value(result)`` per seed (None = missing, which blanks the cell)."""
    cell = Cell([])
    for seed, result in sorted(seeds.items()):
        v = value(result)
        if v is None:
            cell.complete = False
        else:
            cell.values.append(float(v))
            cell.seeds.append(seed)
    return cell


def _ratio(result: RunResult, kind: str) -> float | None:
    """Compact over dense ``kind`` ("flops" or "params") of a result's network, in %."""
    return getattr(result.inference, kind).percent if result.inference is not None else None


def rows(group: Group) -> list[Row]:
    """The group's rows, with Δm against its reference, paired to ew, ranked by paired tests and sorted."""
    columns = group.metric_columns
    table = []
    for method in sorted(group.runs):
        seeds = group.runs[method]
        metrics = {}
        for task, metric, _, _ in columns:
            metrics[(task, metric)] = _seed_cell(
                seeds,
                lambda r, t=task, m=metric: r.tasks[t].metrics[m].value
                if t in r.tasks and m in r.tasks[t].metrics
                else None,
            )
        delta_seen, delta_unseen = delta_cells(group, method)
        extra: dict[str, Any] = {}
        if group.scored_jointly:
            extra = {
                "delta_joint": delta_cells(group, method, "joint")[0],
                "delta_joint_val": delta_cells(group, method, "joint", "val")[0],
                "delta_seen_val": delta_cells(group, method, "adapted", "val")[0],
                "train_flops": _seed_cell(
                    seeds,
                    lambda r: r.training_cost.flops if r.training_cost and r.training_cost.counted_steps else None,
                ),
                "dead": [len(r.sparsity.dead_layers) if r.sparsity else 0 for _, r in sorted(seeds.items())],
            }
        table.append(
            Row(
                method,
                sorted(seeds),
                metrics,
                delta_seen,
                delta_unseen,
                _seed_cell(
                    seeds, lambda r: None if r.sparsity is None or r.sparsity.group_sparsity is None
                    else 100 * r.sparsity.group_sparsity
                ),
                _seed_cell(seeds, lambda r: r.inference.params.compact if r.inference else None),
                _seed_cell(seeds, lambda r: r.inference.flops.compact / 1e9 if r.inference else None),
                _mean_layers(seeds.values()),
                base=group.bases.get(method, method),
                family=method_family(next(iter(seeds.values()))),
                lam_start=_seed_cell(seeds, lambda r: lambda_summary(r.lam.start)),
                lam_end=_seed_cell(seeds, lambda r: lambda_summary(r.lam.end)),
                flops_pct=_seed_cell(seeds, lambda r: _ratio(r, "flops")),
                params_pct=_seed_cell(seeds, lambda r: _ratio(r, "params")),
                options=dict(set.intersection(*(set(r.overrides.items()) for r in seeds.values()))),
                **extra,
            )
        )
    rank_rows(table)
    return sorted(
        table,
        key=lambda r: (
            r.rank is None,
            r.rank.position if r.rank is not None else 0,
            r.primary.mean is None,
            -r.primary.mean if r.primary.mean is not None else 0.0,
            r.method,
        ),
    )


def _mean_layers(results: Iterable[RunResult]) -> list[tuple[str, float]]:
    """Per-layer zeroed-group percentage, averaged over seeds (empty if any seed lacks it)."""
    results = list(results)
    stats = [r.sparsity.layers for r in results if r.sparsity is not None]
    if not stats or len(stats) != len(results) or any(not s or len(s) != len(stats[0]) for s in stats):
        return []
    return [
        (layer.name, sum(100 * s[i].zero_groups / s[i].groups for s in stats) / len(stats))
        for i, layer in enumerate(stats[0])
    ]


def rank_rows(table: list[Row]) -> None:
    """Paired ranks on the primary Δm (`mtbench.stats.paired_ranks`) and every row's paired difference to ew.

    rank = 1 + the number of variants whose paired 95 % interval of the per-seed difference lies entirely above
    0; a variant with fewer than 2 seeds gets no rank and does not count in the others'.
    """
    series = [row.primary.by_seed or None for row in table]
    for row, rank in zip(table, paired_ranks(series)):
        row.rank = rank
    ew = next((row for row in table if row.method == COMPARE_WITH), None)
    for row in table:
        row.vs_ew = (
            None
            if ew is None or row is ew or not row.primary.by_seed
            else paired_comparison(row.primary.by_seed, ew.primary.by_seed)
        )


@dataclass(frozen=True)
class Separation:
    """How many pairs of rows a rule separates: the paired rule and the old rule (non-overlapping intervals)."""

    pairs: int
    paired: int
    unpaired: int


def separation(table: list[Row]) -> Separation:
    """Over every pair of rows with ≥ 2 seeds each: how many the paired and the unpaired rules tell apart."""
    usable = [row for row in table if len(row.primary.by_seed) >= 2]
    pairs = paired = unpaired = 0
    for i, a in enumerate(usable):
        for b in usable[i + 1 :]:
            pairs += 1
            comparison = paired_comparison(a.primary.by_seed, b.primary.by_seed)
            paired += comparison is not None and comparison.separates
            low_a, high_a = a.primary.ci95 or (None, None)
            low_b, high_b = b.primary.ci95 or (None, None)
            if None not in (low_a, high_a, low_b, high_b):
                unpaired += low_a > high_b or low_b > high_a  # type: ignore[operator]
    return Separation(pairs, paired, unpaired)
