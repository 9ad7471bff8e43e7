"""Δm: multi-task performance relative to a reference (normally single-task learning).

Δm = (1/N) Σ_k s_k · (M_k − R_k) / R_k × 100 %, s_k = +1 if higher is better, −1 otherwise, so
**positive Δm = better than the reference**. Two averaging conventions are in use and both are
offered: over all metrics at once (Nash-MTL, CAGrad, FAMO, which report the drop −Δm) and per
task first, then over tasks (LibMTL, Vandenhende et al.).
"""

from __future__ import annotations

from collections.abc import Mapping

from mtbench.errors import MtbenchError
from mtbench.result import RunResult

ALL_METRICS = "all-metric average"
PER_TASK = "per-task average"


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


def run_delta_m(result: RunResult, reference: RunResult) -> dict:
    """Δm of a run against a reference run, seen and held-out tasks apart, in both conventions.

    Returns ``{"seen": {ALL_METRICS: x, PER_TASK: y}, "unseen": {...}, "reference_run": id}``; a role with
    no tasks is omitted. Metrics marked ``in_delta_m=False`` (see `MetricSpec`) are left out.
    """
    out: dict = {
        "reference_run": reference.run_id,
        "reference_method": reference.method.name,
        "positive_is_better": True,
    }
    for role, seen in (("seen", True), ("unseen", False)):
        values, ref, higher, groups = {}, {}, {}, {}
        for task, entry in result.tasks.items():
            if entry.seen is not seen:
                continue
            if task not in reference.tasks:
                raise ScoringError(
                    f"reference run lacks task {task!r}", expected="the same tasks", found=", ".join(reference.tasks)
                )
            for name, metric in entry.metrics.items():
                if not metric.in_delta_m:
                    continue
                key = f"{task}/{name}"
                values[key] = metric.value
                ref[key] = reference.tasks[task].metrics[name].value
                higher[key] = metric.higher_is_better
                groups[key] = task
        if values:
            out[role] = {ALL_METRICS: delta_m(values, ref, higher), PER_TASK: delta_m(values, ref, higher, groups)}
    return out
