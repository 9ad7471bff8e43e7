"""Δm: the Nash-MTL golden number, a hand-worked per-task example, and the error cases."""

from __future__ import annotations

import pytest

from mtbench.result import DatasetRecord, MethodRecord, Metric, Protocol, RunResult, TaskOutcome
from mtbench.scoring import ScoringError, delta_m

NAMES = ["mIoU", "pixAcc", "absErr", "relErr", "mean", "median", "within11.25", "within22.5", "within30"]
HIGHER = dict(zip(NAMES, [True, True, False, False, False, False, True, True, True]))
STL = dict(zip(NAMES, [0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915]))
LINEAR_SCALARISATION = dict(zip(NAMES, [0.3929, 0.6533, 0.5493, 0.2263, 28.15, 23.96, 0.2209, 0.4750, 0.6108]))
TASK_OF = {
    "mIoU": "seg",
    "pixAcc": "seg",
    "absErr": "depth",
    "relErr": "depth",
    "mean": "normal",
    "median": "normal",
    "within11.25": "normal",
    "within22.5": "normal",
    "within30": "normal",
}


def test_golden_nash_mtl_linear_scalarisation():
    """Nash-MTL (Navon et al. 2022), NYU-v2: LS reports a +5.59 % drop, i.e. Δm = −5.59 % here."""
    assert delta_m(LINEAR_SCALARISATION, STL, HIGHER) == pytest.approx(-5.59, abs=0.005)


def test_reference_against_itself_is_zero():
    assert delta_m(STL, STL, HIGHER) == 0.0
    assert delta_m(STL, STL, HIGHER, TASK_OF) == 0.0


def test_per_task_average_hand_worked():
    # task a: acc 0.6 vs 0.5 (↑) -> +20 %, err 0.9 vs 1.0 (↓) -> +10 %; mean +15 %
    # task b: f1 0.4 vs 0.5 (↑) -> −20 %
    # per task: (15 − 20) / 2 = −2.5 %; all metrics at once: (20 + 10 − 20) / 3 = +3.33 %
    values, reference = {"acc": 0.6, "err": 0.9, "f1": 0.4}, {"acc": 0.5, "err": 1.0, "f1": 0.5}
    higher = {"acc": True, "err": False, "f1": True}
    assert delta_m(values, reference, higher, {"acc": "a", "err": "a", "f1": "b"}) == pytest.approx(-2.5)
    assert delta_m(values, reference, higher) == pytest.approx(10 / 3)


def test_errors():
    with pytest.raises(ScoringError, match="missing from values"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 2.0}, {"a": True, "b": True})
    with pytest.raises(ScoringError, match="missing from reference"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0}, {"a": True, "b": True})
    with pytest.raises(ScoringError, match="missing from higher_is_better"):
        delta_m({"a": 1.0}, {"a": 1.0}, {})
    with pytest.raises(ScoringError, match="zero"):
        delta_m({"a": 1.0}, {"a": 0.0}, {"a": True})
    with pytest.raises(ScoringError, match="missing from groups"):
        delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": True, "b": True}, {"a": "t"})


def _run(run_id: str, tasks: dict) -> dict:
    return {"run_id": run_id, "method": {"name": run_id}, "tasks": tasks}


def _result(run: dict) -> RunResult:
    """A result around hand-written tasks (every other field a placeholder)."""
    return RunResult(
        run_id=run["run_id"],
        created="2026-01-01T00:00:00+00:00",
        method=MethodRecord(name=run["method"]["name"], config={}),
        dataset=DatasetRecord(name="toy", synthetic=True, identity={"fingerprint": "f"}),
        protocol=Protocol(budget="smoke", seen=(), unseen=(), task_versions={}, settings={}),
        seed=0,
        tasks={
            name: TaskOutcome(seen=task["seen"], metrics={m: Metric(**v) for m, v in task["metrics"].items()})
            for name, task in run["tasks"].items()
        },
    )


def test_run_delta_m_leaves_out_metrics_marked_outside_delta_m():
    """An attribute's F1 with a one-class reference (F1 = 0) is reported, not divided by."""
    from mtbench.scoring import ALL_METRICS, PER_TASK, run_delta_m

    def attribute(acc: float, f1: float, seen: bool) -> dict:
        return {
            "seen": seen,
            "metrics": {
                "acc": {"value": acc, "higher_is_better": True, "in_delta_m": True},
                "f1": {"value": f1, "higher_is_better": True, "in_delta_m": False},
            },
        }

    seg = {"seen": True, "metrics": {"mIoU": {"value": 0.6, "higher_is_better": True}}}  # no flag: in Δm
    reference = _run(
        "stl",
        {
            "seg": {**seg, "metrics": {"mIoU": {"value": 0.5, "higher_is_better": True}}},
            "smiling": attribute(0.45, 0.0, False),
        },
    )
    method = _run("ew", {"seg": seg, "smiling": attribute(0.54, 0.3, False)})
    delta = run_delta_m(_result(method), _result(reference))
    assert delta.seen[ALL_METRICS] == pytest.approx(20.0)  # (0.6 − 0.5) / 0.5
    assert delta.unseen[ALL_METRICS] == pytest.approx(20.0)  # (0.54 − 0.45) / 0.45; F1 left out
    assert delta.unseen[PER_TASK] == pytest.approx(20.0)
    assert delta.joint is None  # these results have no joint score (as a schema-2 file)
    method["tasks"]["smiling"]["metrics"]["f1"]["in_delta_m"] = True
    reference["tasks"]["smiling"]["metrics"]["f1"]["in_delta_m"] = True
    with pytest.raises(ScoringError, match="zero"):
        run_delta_m(_result(method), _result(reference))


def test_attribute_f1_is_declared_outside_delta_m():
    from mtbench import catalog

    metrics = {m.name: m for m in catalog.task("celebamask", "smiling").metrics}
    assert not metrics["f1"].in_delta_m and metrics["acc"].in_delta_m and metrics["balancedAcc"].in_delta_m
    assert all(m.in_delta_m for m in catalog.task("nyuv2", "semseg").metrics)


def test_fixed_reference_is_the_metric_wise_mean_of_the_reference_runs():
    from mtbench.scoring import ALL_METRICS, delta_against, mean_scores

    # two stl seeds: mIoU 0.4 and 0.6 (mean 0.5), absErr 1.0 and 3.0 (mean 2.0)
    stl = [
        {"semseg/mIoU": (0.4, True, "semseg"), "depth/absErr": (1.0, False, "depth")},
        {"semseg/mIoU": (0.6, True, "semseg"), "depth/absErr": (3.0, False, "depth")},
    ]
    reference = mean_scores(stl)
    assert reference["semseg/mIoU"][0] == pytest.approx(0.5) and reference["depth/absErr"][0] == pytest.approx(2.0)
    run = {"semseg/mIoU": (0.55, True, "semseg"), "depth/absErr": (1.5, False, "depth")}
    # by hand: (+10 % + 25 %) / 2 = 17.5 %
    assert delta_against(run, reference)[ALL_METRICS] == pytest.approx(17.5)
    # a reference run as Δm's input against the fixed reference: the stl row gets a real spread
    assert [delta_against(r, reference)[ALL_METRICS] for r in stl] == pytest.approx([-10.0 + 25.0, 10.0 - 25.0])
    with pytest.raises(ScoringError, match="differ"):
        mean_scores([stl[0], {"semseg/mIoU": (0.4, True, "semseg")}])
    with pytest.raises(ScoringError, match="lacks"):
        delta_against(run, {"semseg/mIoU": (0.5, True, "semseg")})
