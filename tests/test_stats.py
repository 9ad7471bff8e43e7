"""mtbench.stats: Student-t confidence intervals (own t quantile) and tie-aware ranks."""

from __future__ import annotations

import math

import pytest

from mtbench.stats import (
    Rank,
    confidence_interval,
    mean,
    regularized_incomplete_beta,
    sample_std,
    t_cdf,
    t_quantile,
    tie_aware_ranks,
)

T_975_2 = 4.302653  # t_{0.975, 2}, as printed in every t table (6 decimals)


def test_hand_worked_interval_of_one_two_three():
    interval = confidence_interval([1.0, 2.0, 3.0])
    # mean 2, sample sd 1, t_{0.975,2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    assert interval.mean == 2.0 and interval.n == 3
    assert sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert interval.half_width == pytest.approx(T_975_2 / math.sqrt(3), abs=1e-6)
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert interval.low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    assert interval.high == pytest.approx(2.0 + 2.484138, abs=1e-6)


def test_t_quantile_against_closed_forms():
    # ν = 1 (Cauchy): t_p = tan(π (p − 1/2)); ν = 2: t_p = (2p − 1) / sqrt(2 p (1 − p))
    for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9999, 0.025, 0.3):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert t_quantile(0.975, 2) == pytest.approx(T_975_2, abs=5e-7)
    assert t_quantile(0.5, 7) == 0.0
    # large ν tends to the normal quantile 1.959964
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_t_quantile_inverts_the_cdf_and_is_odd():
    for df in (1, 2, 3, 4, 9, 29, 2.5):
        for p in (0.55, 0.8, 0.975, 0.999):
            t = t_quantile(p, df)
            assert t_cdf(t, df) == pytest.approx(p, abs=1e-12)
            assert t_quantile(1 - p, df) == pytest.approx(-t, rel=1e-12)


def test_incomplete_beta_closed_forms():
    for x in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        assert regularized_incomplete_beta(x, 1.0, 1.0) == pytest.approx(x, abs=1e-14)
        assert regularized_incomplete_beta(x, 3.0, 1.0) == pytest.approx(x**3, abs=1e-14)
        assert regularized_incomplete_beta(x, 1.0, 2.5) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-14)
    # symmetry I_x(a, b) = 1 − I_{1−x}(b, a)
    assert regularized_incomplete_beta(0.3, 2.5, 0.5) == pytest.approx(1 - regularized_incomplete_beta(0.7, 0.5, 2.5))


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")  # scipy is not a dependency of mtbench; only a cross-check
    for df in (1, 2, 3, 4, 5, 9, 19, 99):
        for p in (0.6, 0.9, 0.975, 0.995, 0.9999999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
        for t in (-3.0, -0.4, 0.0, 1.7, 12.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-13)
    for values in ([1.0, 2.0, 3.0], [0.3, -1.2, 4.4, 2.0], [5.0, 5.5], [0.1, 0.2, 0.15, 0.4, 0.33]):
        n = len(values)
        low, high = stats.t.interval(0.95, n - 1, loc=sum(values) / n, scale=stats.sem(values))
        interval = confidence_interval(values)
        assert interval.low == pytest.approx(low, rel=1e-9) and interval.high == pytest.approx(high, rel=1e-9)


def test_one_seed_has_no_interval_and_no_std():
    interval = confidence_interval([0.7])
    assert interval.mean == 0.7 and interval.n == 1
    assert interval.half_width is None and interval.low is None and interval.high is None  # not a fake 0
    assert sample_std([0.7]) is None
    assert mean([]) is None
    with pytest.raises(ValueError):
        confidence_interval([])


def test_identical_seeds_give_a_measured_zero_width():
    assert confidence_interval([2.0, 2.0, 2.0]).half_width == 0.0


def test_tie_aware_rank_three_methods_two_overlapping():
    a, b, c = (0.0, 2.0), (1.0, 3.0), (4.0, 5.0)  # a and b overlap; c lies entirely above both
    assert tie_aware_ranks([a, b, c], higher_is_better=True) == [Rank(2, True), Rank(2, True), Rank(1, False)]
    assert [r.text for r in tie_aware_ranks([a, b, c])] == ["2=", "2=", "1"]
    # lower is better: a and b are both entirely below c, c has two better methods
    assert [r.text for r in tie_aware_ranks([a, b, c], higher_is_better=False)] == ["1=", "1=", "3"]


def test_tie_aware_rank_is_not_a_chain_and_touching_overlaps():
    # b overlaps a and c, but c lies entirely above a: ranks 1 (c), 1= (b) and 2 (a)
    a, b, c = (0.0, 1.0), (0.5, 2.5), (2.0, 3.0)
    assert [r.text for r in tie_aware_ranks([a, b, c])] == ["2", "1=", "1="]
    # touching ends overlap: no one is better
    assert [r.text for r in tie_aware_ranks([(0.0, 1.0), (1.0, 2.0)])] == ["1=", "1="]


def test_missing_intervals_get_no_rank_and_do_not_count():
    ranks = tie_aware_ranks([(0.0, 1.0), None, (5.0, 6.0)])
    assert ranks == [Rank(2, False), None, Rank(1, False)]
    assert tie_aware_ranks([]) == []
    with pytest.raises(ValueError):
        tie_aware_ranks([(2.0, 1.0)])
