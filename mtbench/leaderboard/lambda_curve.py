"""The fixed-λ curve on the validation split: which λ scores best, whether the seeds resolve that optimum from both
ends of the grid (an interior optimum), and where every learned λ ends against it.

The curve's points are the table's fixed-λ variants and, as λ = 0, ``ew`` (the same training: equal weighting and
Adam, whose proximal step at λ = 0 is the identity). Each point's score is its Δm joint on the validation split (no
training signal reads it), per seed. The best point is the one of highest mean; every point is compared with it
paired by seed. The optimum is **interior** where the best point is neither end of the grid and both ends are below
it with paired 95 % intervals that exclude 0; the **optimum's range** is the span of the grid's λ not resolved from
the best (the best included): a learned λ that ends inside it found the optimum as well as the grid can tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtbench.leaderboard.front import AXES, interpolate_front
from mtbench.leaderboard.model import COMPARE_WITH, Cell, Row, significant
from mtbench.stats import Paired, paired_comparison

#: the verdicts of `LambdaCurve.shape`
SHAPES = ("interior", "smallest", "largest", "unresolved")
#: where a learned λ ends against the optimum's range (`LambdaCurve.position`)
POSITIONS = ("below", "just below", "inside", "just above", "above")


@dataclass(frozen=True)
class CurvePoint:
    """One λ of the curve: its row and its validation Δm joint minus the best point's, paired by seed."""

    lam: float
    row: Row
    to_best: Paired | None  # None for the best point itself

    @property
    def score(self) -> Cell:
        return self.row.delta_joint_val

    @property
    def resolved_below_best(self) -> bool:
        """Whether the seeds resolve this point below the best (paired interval entirely below 0)."""
        return self.to_best is not None and self.to_best.separates and self.to_best.interval.mean < 0


@dataclass(frozen=True)
class LambdaCurve:
    """The validation curve of Δm joint against λ (see the module docstring)."""

    points: list[CurvePoint]  # by increasing λ
    best: CurvePoint

    @property
    def shape(self) -> str:
        """``interior`` (resolved from both ends), ``smallest`` / ``largest`` (the best is that end of the grid, and
        the other end is resolved below it: a monotone curve), or ``unresolved``."""
        first, last = self.points[0], self.points[-1]
        if self.best is first:
            return "smallest" if last.resolved_below_best else "unresolved"
        if self.best is last:
            return "largest" if first.resolved_below_best else "unresolved"
        return "interior" if first.resolved_below_best and last.resolved_below_best else "unresolved"

    @property
    def optimum_range(self) -> tuple[float, float]:
        """The smallest and largest λ of the grid that the seeds do not resolve below the best."""
        near = [p.lam for p in self.points if not p.resolved_below_best]
        return min(near), max(near)

    def position(self, lam: float) -> str:
        """Where a λ lies against `optimum_range`: ``inside``; ``just below`` / ``just above`` (between the range
        and the grid's next λ, where the grid cannot tell); ``below`` / ``above`` (past that λ)."""
        low, high = self.optimum_range
        grid = [p.lam for p in self.points]
        if low <= lam <= high:
            return "inside"
        if lam > high:
            beyond = [g for g in grid if g > high]
            return "just above" if not beyond or lam < min(beyond) else "above"
        beyond = [g for g in grid if g < low]
        return "just below" if not beyond or lam > max(beyond) else "below"

    def verdict(self) -> str:
        """One paragraph: the best λ, the shape, the optimum's range."""
        low, high = self.optimum_range
        best = self.best
        span = f"λ = {significant(low)}" if low == high else f"λ from {significant(low)} to {significant(high)}"
        lam = "0 (ew)" if best.lam == 0 else significant(best.lam)
        text = {
            "interior": "an interior optimum: both ends of the grid are below it, resolved by the paired intervals",
            "smallest": "the curve falls from λ = 0 (resolved): nothing here rewards sparsity, and a learned λ should "
            "go to 0",
            "largest": "the curve rises to the largest λ of the grid (resolved): the grid ends before the optimum",
            "unresolved": "the seeds do not resolve the optimum from both ends of the grid",
        }[self.shape]
        return (
            f"λ on the validation split: of {len(self.points)} λ ({', '.join(_lam_text(p.lam) for p in self.points)}), "
            f"λ = {lam} scores best (Δm joint, validation, {best.score.text(2)} %) — {text}. The grid's λ not "
            f"resolved below it: {span}."
        )


@dataclass(frozen=True)
class LearnedLambda:
    """A variant that learns λ: where each seed's final λ lies against the curve's optimum range."""

    row: Row
    positions: dict[int, str]  # seed -> one of POSITIONS

    def text(self) -> str:
        ends = ", ".join(significant(v) for _, v in sorted(self.row.lam_end.by_seed.items()))
        start = self.row.lam_start.mean
        counts = [f"{n} {where}" for where in POSITIONS if (n := sum(p == where for p in self.positions.values()))]
        return (
            f"{self.row.method}: λ {'' if start is None else significant(start) + ' → '}{ends} (per seed): "
            f"{', '.join(counts)} the optimum's range (just: between the range and the grid's next λ)."
        )


def _lam_text(lam: float) -> str:
    return "0" if lam == 0 else significant(lam)


def fixed_lambda(row: Row) -> float | None:
    """The λ of a fixed-λ variant: constant from start to end, the same on every seed."""
    start, end = row.lam_start.by_seed, row.lam_end.by_seed
    values = set(start.values()) | set(end.values())
    return values.pop() if len(values) == 1 else None


def lambda_curve(table: list[Row]) -> LambdaCurve | None:
    """The table's curve, or None with fewer than 2 fixed-λ variants scored on validation (an old-protocol table)."""
    candidates: list[tuple[float, Row]] = []
    for row in table:
        if not row.delta_joint_val.by_seed:
            continue
        if row.family == "front":
            lam = fixed_lambda(row)
            if lam is not None:
                candidates.append((lam, row))
        elif row.method == COMPARE_WITH:
            candidates.append((0.0, row))
    if sum(row.family == "front" for _, row in candidates) < 2:
        return None
    candidates.sort(key=lambda pair: (pair[0], pair[1].method))
    candidates = [(lam, row) for lam, row in candidates if row.delta_joint_val.mean is not None]
    _, best_row = max(candidates, key=lambda pair: pair[1].delta_joint_val.mean)
    points = [
        CurvePoint(
            lam,
            row,
            None
            if row is best_row
            else paired_comparison(row.delta_joint_val.by_seed, best_row.delta_joint_val.by_seed),
        )
        for lam, row in candidates
    ]
    return LambdaCurve(points, next(p for p in points if p.row is best_row))


def learned_lambdas(table: list[Row], curve: LambdaCurve) -> list[LearnedLambda]:
    """Every non-fixed-λ variant whose λ moves during training (meta-sparsity, implicit-lambda, ...), placed on
    ``curve``."""
    out = []
    for row in table:
        if row.family == "front" or not row.lam_end.by_seed or fixed_lambda(row) is not None:
            continue
        out.append(LearnedLambda(row, {seed: curve.position(v) for seed, v in row.lam_end.by_seed.items()}))
    return out


def lambda_for_cost(table: list[Row], target: float, axis: str = "flops") -> float | None:
    """The fixed λ expected to land at ``target`` on ``axis`` (a name of `mtbench.leaderboard.front.AXES`, e.g.
    compact FLOPs as % of the dense network's): log λ interpolated linearly between the fixed-λ variants' mean
    costs. None outside the range those variants span (extrapolating a front is a guess: run a λ beyond it) or with
    fewer than 2 of them. The cost a λ gives is read off training runs, never off a test score."""
    cost = AXES[axis].cell
    points = []
    for row in table:
        lam = fixed_lambda(row) if row.family == "front" else None
        if lam is not None and lam > 0 and cost(row).mean is not None:
            points.append((cost(row).mean, math.log(lam)))
    at = interpolate_front(points, target)
    return None if at is None else math.exp(at)
