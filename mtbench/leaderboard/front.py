"""The fixed-λ front on what a user pays: each seed's fixed-λ variants trace Δm against a cost axis (compact FLOPs
or parameters as % of the dense network's, or group sparsity as a secondary view); every other variant is
compared with its own seed's front at its own cost (paired over seeds), and method families with several
variants (e.g. prune at three sparsities) with the front at fixed cost points."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mtbench.leaderboard.model import Cell, Row, collect, rows
from mtbench.result import RunResult
from mtbench.stats import Paired, confidence_interval


@dataclass(frozen=True)
class Axis:
    """A cost axis of the front: its name, its label with unit, and the row's per-seed values on it."""

    name: str
    label: str
    short: str
    cell: Callable[[Row], Cell]
    points: tuple[float, ...]  # the fixed points of the matched comparison


AXES = {
    "flops": Axis("flops", "compact FLOPs (% of the dense network's)", "FLOPs %", lambda r: r.flops_pct, (25, 50, 75)),
    "params": Axis(
        "params", "compact parameters (% of the dense network's)", "params %", lambda r: r.params_pct, (25, 50, 75)
    ),
    "groups": Axis(
        "groups", "group sparsity of the shared backbone (%)", "group sparsity %", lambda r: r.sparsity, (25, 50, 75)
    ),
}
DEFAULT_AXIS = "flops"


def interpolate_front(points: Iterable[tuple[float, float]], x: float) -> float | None:
    """Δm of a front given as (cost, Δm) points at cost ``x``, linear between neighbours.

    None with fewer than 2 points or outside the points' range; points sharing a cost are averaged there.
    """
    ordered = sorted(points)
    if len(ordered) < 2 or not ordered[0][0] <= x <= ordered[-1][0]:
        return None
    at_node = [delta for cost, delta in ordered if cost == x]
    if at_node:
        return sum(at_node) / len(at_node)
    for (x0, y0), (x1, y1) in zip(ordered, ordered[1:]):
        if x0 < x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None  # unreachable: the range check above guarantees a segment


def front_rows(table: Iterable[Row]) -> list[Row]:
    """The fixed-λ variants with a sparsity mean and a primary Δm mean, by increasing sparsity."""
    front = [
        row
        for row in table
        if row.family == "front" and row.sparsity.mean is not None and row.primary.mean is not None
    ]
    return sorted(front, key=lambda row: (row.sparsity.mean, row.method))


def delta_cell(row: Row, role: str) -> Cell:
    """The row's primary Δm (``seen``: joint where scored so) or its held-out Δm (``unseen``)."""
    if role not in ("seen", "unseen"):
        raise ValueError(f"role must be 'seen' or 'unseen', not {role!r}")
    return row.primary if role == "seen" else row.delta_unseen


def front_delta_at(front: list[Row], x: float, role: str, axis: str = "groups") -> float | None:
    """The front of means' Δm (``role`` "seen" or "unseen" = held-out) at ``x`` on ``axis`` (a name of `AXES`:
    group sparsity by default); None where undefined."""
    cost = AXES[axis].cell
    points = [
        (cost(row).mean, delta_cell(row, role).mean)
        for row in front
        if cost(row).mean is not None and delta_cell(row, role).mean is not None
    ]
    return interpolate_front(points, x)


def seed_points(rows_: Iterable[Row], axis: Axis, seed: int, role: str) -> list[tuple[float, float]]:
    """One seed's (cost, Δm) points of ``rows_``."""
    points = []
    for row in rows_:
        x, y = axis.cell(row).by_seed.get(seed), delta_cell(row, role).by_seed.get(seed)
        if x is not None and y is not None:
            points.append((x, y))
    return points


def paired_to_front(row: Row, front: list[Row], axis: Axis, role: str) -> Paired | None:
    """The row's Δm minus its own seed's front at its own cost, per seed, and the interval of those differences.

    A seed counts where the row has a cost and a Δm and its front (≥ 2 fixed-λ points) spans that cost; None
    without such a seed.
    """
    differences = []
    own_x, own_y = axis.cell(row).by_seed, delta_cell(row, role).by_seed
    for seed in sorted(set(own_x) & set(own_y)):
        at = interpolate_front(seed_points(front, axis, seed, role), own_x[seed])
        if at is not None:
            differences.append(own_y[seed] - at)
    return _paired(differences)


def _paired(differences: list[float]) -> Paired | None:
    """The paired comparison made of per-seed differences; None without any."""
    return Paired(confidence_interval(differences), sum(d > 0 for d in differences)) if differences else None


@dataclass
class FrontComparison:
    """A non-fixed-λ variant against its seeds' fixed-λ fronts at its own cost, on each axis."""

    row: Row
    on_axis: dict[str, Paired | None]  # axis name -> primary Δm minus the front
    unseen: Paired | None  # held-out Δm minus the front, on the default axis


def front_comparisons(table: list[Row]) -> list[FrontComparison]:
    """Every non-fixed-λ variant with a cost against the front (empty if the front has < 2 variants)."""
    front = front_rows(table)
    if len(front) < 2:
        return []
    others = [row for row in table if row.family != "front" and row.flops_pct.mean is not None]
    others.sort(key=lambda row: (row.flops_pct.mean, row.method))
    return [
        FrontComparison(
            row,
            {name: paired_to_front(row, front, axis, "seen") for name, axis in AXES.items()},
            paired_to_front(row, front, AXES[DEFAULT_AXIS], "unseen"),
        )
        for row in others
    ]


@dataclass
class MatchedPoint:
    """A method family (its variants as one curve per seed) against the front at one fixed cost point."""

    family: str
    axis: Axis
    point: float
    family_delta: Cell  # the family's interpolated Δm per seed
    difference: Paired | None  # family minus front, per seed


def _numeric_option(row: Row) -> str | None:
    """The name of the row's one --set option if it is a number (prune's ``sparsity``), else None."""
    if len(row.options) != 1:
        return None
    (name, value), = row.options.items()
    try:
        float(value)
    except (TypeError, ValueError):
        return None
    return name


def matched_points(table: list[Row]) -> list[MatchedPoint]:
    """Each family against the front at the axes' fixed points, paired by seed. A family: ≥ 2 variants of one
    method (not the front's) that differ in one numeric option only, e.g. prune at three sparsities.

    Per seed both curves are interpolated linearly between their variants at the point; a seed where either
    curve does not span the point is left out (and the count n shows it); a point no seed reaches is not listed.
    """
    front = front_rows(table)
    families: dict[str, list[Row]] = {}
    for row in table:
        option = _numeric_option(row)
        if row.family != "front" and option is not None and row.flops_pct.mean is not None:
            families.setdefault(f"{row.base} ({option})", []).append(row)
    out = []
    for family, members in sorted(families.items()):
        if len(members) < 2 or len(front) < 2:
            continue
        seeds = sorted(set.intersection(*(set(r.primary.by_seed) for r in members)))
        for axis in AXES.values():
            for point in axis.points:
                own, differences = Cell([]), []
                for seed in seeds:
                    mine = interpolate_front(seed_points(members, axis, seed, "seen"), point)
                    theirs = interpolate_front(seed_points(front, axis, seed, "seen"), point)
                    if mine is None or theirs is None:
                        continue
                    own.values.append(mine)
                    own.seeds.append(seed)
                    differences.append(mine - theirs)
                if differences:  # a point no seed's curves reach is left out
                    out.append(MatchedPoint(family, axis, point, own, _paired(differences)))
    return out


@dataclass(frozen=True)
class FrontReading:
    """The fixed-λ front read at one run's cost (`front_at`): Δm of the front, interpolated between the fixed-λ
    variants' means over seeds."""

    axis: str  #: the cost axis' label
    at: float  #: the run's cost on it
    score: str  #: the Δm read: ``joint`` or ``seen``
    seen: float
    unseen: float | None
    variants: int  #: fixed-λ variants stored


def front_at(result: RunResult, results_dir: Path) -> FrontReading | None:
    """The stored fixed-λ front of this run's data set and protocol, read at this run's cost: its compact FLOPs
    as % of the dense network's where the run has them (what a user pays), else its group sparsity.

    None when fewer than two fixed-λ variants are stored or the run's cost is outside the front.
    """
    flops = result.inference.flops.percent if result.inference is not None else None
    if flops is not None:
        axis, at = "flops", flops
    elif result.sparsity is not None and result.sparsity.group_sparsity is not None:
        axis, at = "groups", 100.0 * result.sparsity.group_sparsity
    else:
        return None
    signature = result.signature()
    for group in collect(results_dir):
        sample = next(iter(next(iter(group.runs.values())).values()))
        if sample.signature() != signature:
            continue
        front = front_rows(rows(group))
        seen = front_delta_at(front, at, "seen", axis)
        if len(front) < 2 or seen is None:
            return None
        return FrontReading(AXES[axis].label, at, front[0].primary_name, seen,
                            front_delta_at(front, at, "unseen", axis), len(front))
    return None
