"""mtbench.stats: Student-t confidence intervals (own t quantile) and tie-aware ranks."""

from __future__ import annotations

import math

import pytest

from mtbench.stats import (
    Rank,
    confidence_interval,
    mean,
    paired_comparison,
    paired_ranks,
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


def test_paired_interval_by_hand():
    # a − b per seed: 1, 2, 3 (seed 9 only in a: left out) -> mean 2, s 1, t_{0.975,2} 4.302653 / √3 = 2.484138
    a = {0: 11.0, 1: 22.0, 2: 33.0, 9: 100.0}
    b = {0: 10.0, 1: 20.0, 2: 30.0}
    paired = paired_comparison(a, b)
    assert paired.n == 3 and paired.wins == 3
    assert paired.interval.mean == pytest.approx(2.0)
    assert paired.interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert not paired.separates  # the interval [-0.48, 4.48] holds 0
    assert paired_comparison({0: 1.0}, {1: 1.0}) is None


def test_pairing_separates_what_unpaired_intervals_cannot():
    # a shared seed effect (seed 2 is hard for both) swamps the unpaired intervals; a is better on every seed
    # by 1.0 ± 0.1, which the paired differences resolve
    seed_effect = [0.0, 5.0, -8.0, 3.0, -2.0]
    gap = [1.0, 1.1, 0.9, 1.05, 0.95]
    a = {s: 50.0 + e + g for s, (e, g) in enumerate(zip(seed_effect, gap))}
    b = {s: 50.0 + e for s, e in enumerate(seed_effect)}
    unpaired = [confidence_interval(list(v.values())) for v in (a, b)]
    assert unpaired[0].low < unpaired[1].high  # the 95 % intervals overlap: tie_aware_ranks calls it a tie
    assert [r.text for r in tie_aware_ranks([(i.low, i.high) for i in unpaired])] == ["1=", "1="]
    paired = paired_comparison(a, b)
    assert paired.separates and paired.wins == 5
    assert paired.interval.mean == pytest.approx(1.0)
    assert [r.text for r in paired_ranks([a, b])] == ["1", "2"]
    assert [r.text for r in paired_ranks([b, a], higher_is_better=False)] == ["1", "2"]


def test_paired_ranks_mark_ties_and_skip_missing_series():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 1.5, 1: 1.5, 2: 3.5}  # differences to a straddle 0: a tie
    c = {0: -5.0, 1: -4.0, 2: -3.1}  # worse than both on every seed by a steady margin
    ranks = paired_ranks([a, b, None, c, {0: 9.0}])
    assert [None if r is None else r.text for r in ranks] == ["1=", "1=", None, "3", None]
