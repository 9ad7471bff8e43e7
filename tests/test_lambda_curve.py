"""The validation λ curve (`mtbench.leaderboard.lambda_curve`): its shape, the optimum's range and where a learned λ
ends, on hand-made rows whose paired intervals are worked out by hand."""

from __future__ import annotations

import math

import pytest

from mtbench.leaderboard.lambda_curve import lambda_curve, lambda_for_cost, learned_lambdas
from mtbench.leaderboard.model import Cell, Row

SEEDS = [0, 1, 2, 3, 4]


def _cell(values: list[float]) -> Cell:
    return Cell(list(values), seeds=SEEDS[: len(values)])


def _row(
    method: str,
    val: list[float],
    family: str = "front",
    lam: float | list[float] | None = None,
    lam_start: float | None = None,
) -> Row:
    ends = [lam] * len(val) if isinstance(lam, (int, float)) else lam
    starts = [lam_start if lam_start is not None else lam] * len(val) if lam is not None else None
    return Row(
        method=method,
        seeds=SEEDS[: len(val)],
        metrics={},
        delta_seen=Cell([]),
        delta_unseen=Cell([]),
        sparsity=Cell([]),
        params=Cell([]),
        gflops=Cell([]),
        layers=[],
        family=family,
        lam_start=_cell(starts) if starts else Cell([]),
        lam_end=_cell(ends) if ends else Cell([]),
        delta_joint_val=_cell(val),
    )


def _ew(val: list[float]) -> Row:
    return _row("ew", val, family="dense")


def test_interior_optimum_resolved_from_both_ends() -> None:
    base = [0.0, 1.0, -1.0, 0.5, -0.5]
    table = [
        _ew(base),
        _row("fixed-lambda (lam=0.01)", [b + d for b, d in zip(base, [1, 2, 3, 4, 5])], lam=0.01),
        _row("fixed-lambda (lam=0.1)", [b - 1 for b in base], lam=0.1),
    ]
    curve = lambda_curve(table)
    assert curve is not None
    assert [p.lam for p in curve.points] == [0.0, 0.01, 0.1]
    assert curve.best.lam == 0.01 and curve.shape == "interior"
    assert curve.optimum_range == (0.01, 0.01)
    # ew − best: differences −1 … −5: mean −3, s = √2.5, t(0.975, 4) = 2.776445
    to_best = curve.points[0].to_best
    assert to_best is not None and to_best.wins == 0
    assert to_best.interval.mean == pytest.approx(-3.0)
    assert to_best.interval.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-5)
    assert curve.position(0.01) == "inside"
    assert curve.position(0.005) == "just below" and curve.position(0.05) == "just above"
    assert curve.position(0.2) == "above"
    assert "interior optimum" in curve.verdict()


def test_monotone_curve_puts_the_optimum_at_zero_and_a_learned_lambda_above_it() -> None:
    base = [0.0, 2.0, -2.0, 1.0, -1.0]
    table = [
        _ew(base),
        _row("fixed-lambda (lam=0.003)", [b - 3 - 0.1 * i for i, b in enumerate(base)], lam=0.003),
        _row("fixed-lambda (lam=0.03)", [b - 9 + 0.1 * i for i, b in enumerate(base)], lam=0.03),
        _row("meta-sparsity", base, family="sparse", lam=[0.001, 0.002, 0.01, 0.05, 0.0005], lam_start=0.01),
    ]
    curve = lambda_curve(table)
    assert curve is not None and curve.best.row.method == "ew"
    assert curve.shape == "smallest" and curve.optimum_range == (0.0, 0.0)
    (learned,) = learned_lambdas(table, curve)
    assert learned.positions == {0: "just above", 1: "just above", 2: "above", 3: "above", 4: "just above"}
    assert "3 just above, 2 above" in learned.text()
    assert "a learned λ should go to 0" in curve.verdict()


def test_noise_leaves_the_optimum_unresolved_and_wide() -> None:
    table = [
        _ew([0.0, 5.0, -5.0, 3.0, -3.0]),
        _row("fixed-lambda (lam=0.01)", [1.0, -4.0, 6.0, -2.0, 4.0], lam=0.01),
        _row("fixed-lambda (lam=0.1)", [-1.0, 3.0, -6.0, 4.0, -4.0], lam=0.1),
    ]
    curve = lambda_curve(table)
    assert curve is not None and curve.shape == "unresolved"
    assert curve.optimum_range == (0.0, 0.1)


def test_no_curve_without_two_fixed_lambda_rows_on_validation() -> None:
    assert lambda_curve([_ew([0.0, 1.0]), _row("fixed-lambda (lam=0.01)", [0.0, 1.0], lam=0.01)]) is None
    old = _row("fixed-lambda (lam=0.1)", [], lam=0.1)  # an old-protocol row: no validation score
    assert lambda_curve([_ew([0.0, 1.0]), _row("fixed-lambda (lam=0.01)", [0.0, 1.0], lam=0.01), old]) is None


def test_lambda_for_cost_interpolates_log_lambda_between_the_front_means() -> None:
    def front(lam: float, flops: list[float]) -> Row:
        row = _row(f"fixed-lambda (lam={lam})", [0.0] * len(flops), lam=lam)
        row.flops_pct = _cell(flops)
        return row

    table = [front(0.001, [90.0, 92.0]), front(0.1, [40.0, 42.0]), _ew([0.0, 0.0])]
    # mean costs 91 and 41; 66 is halfway, so log λ is halfway between log 0.001 and log 0.1: λ = 0.01
    assert lambda_for_cost(table, 66.0) == pytest.approx(0.01)
    assert lambda_for_cost(table, 91.0) == pytest.approx(0.001)
    assert lambda_for_cost(table, 30.0) is None  # beyond the front: no extrapolation
    assert lambda_for_cost(table[:1], 91.0) is None
