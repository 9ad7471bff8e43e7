"""Δm: multi-task performance relative to a reference (normally single-task learning).

Δm = (1/N) Σ_k s_k · (M_k − R_k) / R_k × 100 %, s_k = +1 if higher is better, −1 otherwise, so
**positive Δm = better than the reference**. Two averaging conventions are in use and both are
offered: over all metrics at once (Nash-MTL, CAGrad, FAMO, which report the drop −Δm) and per
task first, then over tasks (LibMTL, Vandenhende et al.).
"""

from __future__ import annotations

from collections.abc import Mapping

from mtbench.errors import MtbenchError
from mtbench.result import ALL_METRICS, PER_TASK, DeltaM, RunResult, TaskOutcome


class ScoringError(MtbenchError):
    """Δm cannot be computed from the given numbers."""


def delta_m(
    values: Mapping[str, float],
    reference: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    groups: Mapping[str, str] | None = None,
) -> float:
    """Δm in percent, positive = better than ``reference``.

    Args:
        values: metric name -> the method's value.
        reference: metric name -> the reference's value (same names).
        higher_is_better: metric name -> direction.
        groups: metric name -> task name; when given, average per task first, then over tasks.

    Raises:
        ScoringError: a metric missing from either side (or from the directions or groups), or a zero
            reference value.
    """
    names = set(values) | set(reference)
    sides = [("values", values), ("reference", reference), ("higher_is_better", higher_is_better)]
    for side, mapping in sides + ([("groups", groups)] if groups is not None else []):
        missing = sorted(names - set(mapping))
        if missing:
            raise ScoringError(
                f"metric {missing[0]!r} is missing from {side}",
                expected="the same metrics on both sides, each with a direction (and a task, per task)",
                found=f"{side} lacks {', '.join(missing)}",
            )
    if not names:
        raise ScoringError("no metrics to compare", expected="at least one metric", found="none")
    relative: dict[str, float] = {}
    for name in sorted(names):
        if reference[name] == 0:
            raise ScoringError(
                f"reference value of {name!r} is zero",
                expected="a non-zero reference",
                found="0",
                fix="Δm divides by the reference; leave this metric out",
            )
        sign = 1.0 if higher_is_better[name] else -1.0
        relative[name] = sign * (values[name] - reference[name]) / reference[name] * 100.0
    if groups is None:
        return sum(relative.values()) / len(relative)
    per_task: dict[str, list[float]] = {}
    for name, value in relative.items():
        per_task.setdefault(groups[name], []).append(value)
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def _task_scores(entry: TaskOutcome, score: str, split: str) -> dict[str, tuple[float, bool, bool]] | None:
    """``{metric: (value, higher_is_better, in_delta_m)}`` of one task under ``score`` (``adapted``/``joint``) on
    ``split`` (``test``/``val``); None where the result has none (a held-out task's joint score, an older schema)."""
    if split == "test":
        metrics = entry.metrics if score == "adapted" else entry.joint
        return None if metrics is None else {n: (m.value, m.higher_is_better, m.in_delta_m) for n, m in metrics.items()}
    values = (entry.validation or {}).get(score)
    if values is None:
        return None
    return {n: (values[n], m.higher_is_better, m.in_delta_m) for n, m in entry.metrics.items() if n in values}


#: one role's Δm inputs: ``task/metric`` -> (value, higher_is_better, task), metrics in Δm only
RoleScores = dict[str, tuple[float, bool, str]]


def role_scores(result: RunResult, seen: bool, score: str = "adapted", split: str = "test") -> RoleScores | None:
    """The Δm inputs of one role (seen or held out) of a run under ``score`` (``adapted`` or ``joint``) on
    ``split`` (``test`` or ``val``); None when the role has no task or a task lacks the score."""
    out: RoleScores = {}
    for task, entry in result.tasks.items():
        if entry.seen is not seen:
            continue
        mine = _task_scores(entry, score, split)
        if mine is None:
            return None
        for name, (value, up, counted) in mine.items():
            if counted:
                out[f"{task}/{name}"] = (value, up, task)
    return out or None


def mean_scores(runs: list[RoleScores]) -> RoleScores:
    """The metric-wise mean of several runs' `role_scores` (a fixed reference: stl's mean over seeds).

    Raises:
        ScoringError: no runs, or runs that do not have the same metrics.
    """
    if not runs:
        raise ScoringError("no runs to average", expected="at least one reference run", found="none")
    names = set(runs[0])
    for run in runs[1:]:
        if set(run) != names:
            raise ScoringError(
                "reference runs differ in their metrics",
                expected=", ".join(sorted(names)),
                found=", ".join(sorted(set(run))),
            )
    return {
        name: (sum(run[name][0] for run in runs) / len(runs), runs[0][name][1], runs[0][name][2])
        for name in sorted(names)
    }


def delta_against(values: RoleScores, reference: RoleScores) -> dict[str, float]:
    """Δm in both conventions of `role_scores` against a reference's (a run's, or a `mean_scores`).

    Raises:
        ScoringError: a metric on one side only, or a zero reference value.
    """
    missing = sorted(set(values) ^ set(reference))
    if missing:
        task = missing[0].split("/")[0]
        raise ScoringError(
            f"reference lacks {missing[0]!r}" if missing[0] in values else f"run lacks {missing[0]!r}",
            expected="the same tasks and metrics on both sides",
            found=f"task {task!r} differs",
        )
    higher = {k: v[1] for k, v in values.items()}
    groups = {k: v[2] for k, v in values.items()}
    mine = {k: v[0] for k, v in values.items()}
    theirs = {k: v[0] for k, v in reference.items()}
    return {ALL_METRICS: delta_m(mine, theirs, higher), PER_TASK: delta_m(mine, theirs, higher, groups)}


def role_delta(
    result: RunResult, reference: RunResult, seen: bool, score: str = "adapted", split: str = "test"
) -> dict[str, float] | None:
    """Δm in both conventions of the tasks of one role (seen or held out), under ``score`` (``adapted`` or
    ``joint``) on ``split`` (``test`` or ``val``); None when the role has no task or a side lacks the score."""
    for task, entry in result.tasks.items():
        if entry.seen is seen and task not in reference.tasks:
            raise ScoringError(
                f"reference run lacks task {task!r}", expected="the same tasks", found=", ".join(reference.tasks)
            )
    values = role_scores(result, seen, score, split)
    theirs = role_scores(reference, seen, score, split)
    if values is None or theirs is None:
        return None
    return delta_against(values, {k: v for k, v in theirs.items() if k in values})  # extra reference metrics: unused


def run_delta_m(result: RunResult, reference: RunResult) -> DeltaM:
    """Δm of a run against a reference run on the test split: the adapted score of the seen and of the held-out
    tasks, and the joint score of the seen tasks, each in both conventions (a role or score without tasks is
    None). Metrics marked ``in_delta_m=False`` (see `MetricSpec`) are left out.
    """
    return DeltaM(
        reference_run=reference.run_id,
        reference_method=reference.method.name,
        seen=role_delta(result, reference, seen=True),
        unseen=role_delta(result, reference, seen=False),
        joint=role_delta(result, reference, seen=True, score="joint"),
    )
