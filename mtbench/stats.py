"""Small statistics over seeds for the leaderboard: means, Student-t confidence intervals, tie-aware ranks.

Pure Python (``math`` only), no dependency beyond the standard library.

**Confidence interval.** For values x_1 … x_n (one per seed) with mean m and sample standard deviation
s = sqrt(Σ (x_i − m)² / (n − 1)), the two-sided confidence interval of the mean at level L (0.95 by
default) is m ± h with the half-width

    h = t_{(1 + L)/2, n − 1} · s / √n,

where t_{p, ν} is the p-quantile of Student's t distribution with ν degrees of freedom. The quantile is
computed here (`t_quantile`), not looked up in a table: the t CDF is written with the regularized
incomplete beta function (evaluated by its continued fraction) and inverted by bisection. For example
[1, 2, 3]: m = 2, s = 1, t_{0.975, 2} = 4.302653, h = 4.302653 / √3 = 2.484138. With n = 1 there is no
interval (ν = 0): `confidence_interval` returns a half-width of None, shown blank, never 0. Identical
values (s = 0) with n ≥ 2 do give h = 0: that is a measured zero spread, not a missing one.

**Tie-aware rank.** Each method i has an interval [low_i, high_i] (its 95 % CI). Its rank is

    rank_i = 1 + #{ j : the interval of j lies entirely on the better side of the interval of i },

i.e. for higher-is-better low_j > high_i, for lower-is-better high_j < low_i (strictly: intervals that
touch overlap). Methods whose intervals overlap never push each other down, so a rank only counts the
differences the seeds resolve; it is not a strict order. Methods sharing a rank value are *tied* and
written with an equals sign, e.g. ``2=``. A method without an interval (one seed, or a blank mean) gets
no rank and does not count in the others' ranks. If j is better than i, everything better than j is
also better than i, so rank_j < rank_i: sorting by rank never puts a resolved worse method first.

**Paired comparison.** Seeds share the data order, the episodes and the reference, so two methods are compared
by their per-seed differences d_s = a_s − b_s over the seeds both have: the interval is the t interval above of
the d_s (n − 1 degrees of freedom), and the *wins* count the seeds with d_s > 0. Variation that the seeds
share (a hard seed for every method) cancels in d_s, so a paired interval can exclude 0 where two unpaired
intervals overlap. **Paired rank**: rank_i = 1 + #{ j : the paired interval of a_j − a_i lies entirely above
0 }, ties marked as above; a pair with fewer than 2 common seeds is not compared. There is no correction for
the number of pairs: each pair is one 95 % test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95  # the confidence level used throughout the leaderboard


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; None for no values."""
    return sum(values) / len(values) if values else None


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (divisor n − 1); None with fewer than 2 values (undefined, not 0)."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


# --- Student's t --------------------------------------------------------------------------------------------


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        # even step: d_{2m} = m (b − m) x / ((a + 2m − 1)(a + 2m))
        numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        fraction *= d * c
        # odd step: d_{2m+1} = −(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        fraction *= step
        if abs(step - 1.0) < 1e-15:
            return fraction
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 ≤ x ≤ 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], not {x}")
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, not {a} and {b}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` > 0 degrees of freedom: for t ≥ 0, 1 − I_{df/(df+t²)}(df/2, 1/2) / 2."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (inverts `t_cdf` by bisection)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, not {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, not {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    # bisection on the upper tail P(T > t) = I_{df/(df+t²)}(df/2, 1/2) / 2, which keeps its precision near p = 1
    target = 1.0 - p

    def upper_tail(t: float) -> float:
        return 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)

    low, high = 0.0, 1.0
    while upper_tail(high) > target:  # bracket: double until the tail falls below 1 − p
        low, high = high, 2.0 * high
    for _ in range(300):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if upper_tail(middle) > target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


# --- intervals and ranks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Mean and confidence-interval half-width of ``n`` values; ``half_width`` is None when n < 2."""

    mean: float
    half_width: float | None
    n: int
    level: float = LEVEL

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def confidence_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{(1+level)/2, n−1} · s / √n over ``values`` (see the module docstring); needs ≥ 1 value."""
    if not values:
        raise ValueError("a confidence interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, not {level}")
    n = len(values)
    m = sum(values) / n
    s = sample_std(values)
    if s is None:
        return Interval(m, None, n, level)
    return Interval(m, t_quantile((1.0 + level) / 2.0, n - 1) * s / math.sqrt(n), n, level)


@dataclass(frozen=True)
class Rank:
    """A tie-aware rank: ``position`` (1 = best) and whether another method shares it."""

    position: int
    tied: bool

    @property
    def text(self) -> str:
        """``"2"``, or ``"2="`` when tied."""
        return f"{self.position}{'=' if self.tied else ''}"


def tie_aware_ranks(
    intervals: Sequence[tuple[float, float] | None], *, higher_is_better: bool = True
) -> list[Rank | None]:
    """The rank of each (low, high) interval (see the module docstring); None for a missing interval.

    rank_i = 1 + the number of intervals lying entirely on the better side of interval i (no overlap,
    touching counts as overlap); ranks shared by two or more intervals are marked tied.
    """
    for interval in intervals:
        if interval is not None and not interval[0] <= interval[1]:
            raise ValueError(f"an interval must have low ≤ high, not {interval}")
    present = [interval for interval in intervals if interval is not None]

    def better(j: tuple[float, float], i: tuple[float, float]) -> bool:
        return j[0] > i[1] if higher_is_better else j[1] < i[0]

    positions = [
        None if interval is None else 1 + sum(better(other, interval) for other in present) for interval in intervals
    ]
    counts: dict[int, int] = {}
    for position in positions:
        if position is not None:
            counts[position] = counts.get(position, 0) + 1
    return [None if position is None else Rank(position, counts[position] > 1) for position in positions]


@dataclass(frozen=True)
class Paired:
    """The paired comparison of a with b: the interval of the per-seed differences a_s − b_s and the wins."""

    interval: Interval
    wins: int  # seeds with a_s > b_s

    @property
    def n(self) -> int:
        return self.interval.n

    @property
    def separates(self) -> bool:
        """Whether the interval excludes 0 (needs ≥ 2 seeds)."""
        low, high = self.interval.low, self.interval.high
        return low is not None and high is not None and (low > 0 or high < 0)


def paired_comparison(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Paired | None:
    """a − b paired by seed over the seeds both have (see the module docstring); None without a common seed."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    differences = [a[seed] - b[seed] for seed in common]
    return Paired(confidence_interval(differences, level), sum(d > 0 for d in differences))


def paired_ranks(series: Sequence[Mapping[int, float] | None], *, higher_is_better: bool = True) -> list[Rank | None]:
    """The paired rank of each per-seed series (see the module docstring); None for a missing or one-seed series.

    rank_i = 1 + the number of series j whose paired interval of (j − i) lies entirely on the better side of 0.
    """
    sign = 1.0 if higher_is_better else -1.0
    usable = [s is not None and len(s) >= 2 for s in series]
    positions: list[int | None] = []
    for i, mine in enumerate(series):
        if not usable[i]:
            positions.append(None)
            continue
        better = 0
        for j, other in enumerate(series):
            if j == i or not usable[j]:
                continue
            paired = paired_comparison(other, mine)
            if paired is not None and paired.separates and sign * paired.interval.mean > 0:
                better += 1
        positions.append(1 + better)
    counts: dict[int, int] = {}
    for position in positions:
        if position is not None:
            counts[position] = counts.get(position, 0) + 1
    return [None if p is None else Rank(p, counts[p] > 1) for p in positions]


__all__ = [
    "LEVEL",
    "Interval",
    "Paired",
    "Rank",
    "confidence_interval",
    "mean",
    "paired_comparison",
    "paired_ranks",
    "regularized_incomplete_beta",
    "sample_std",
    "t_cdf",
    "t_quantile",
    "tie_aware_ranks",
]
