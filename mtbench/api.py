"""mtbench from Python: the same runs as ``mtbench run``, as calls.

Example::

    import mtbench

    plan = mtbench.plan("meta-sparsity", dataset="nyuv2-synth", unseen=["depth"], budget="smoke")
    print(plan.describe())          # what `mtbench run --dry-run` prints
    result = mtbench.run(plan)      # a RunResult: trained, meta-tested, stored in the results store
    print(result.delta_m.overall("joint"), result.delta_m.overall("seen"), result.sparsity.group_sparsity)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mtbench.request import RunPlan, RunRequest
from mtbench.result import RunResult
from mtbench.runner import execute_plan
from mtbench.runner import plan as _plan


def request(method: str, **options: Any) -> RunRequest:
    """A `RunRequest` from keyword options (the long names of ``mtbench run``'s options; ``set`` = ``--set``)."""
    overrides = options.pop("set", None) or options.pop("overrides", None) or {}
    for name in ("unseen", "tasks", "plugins"):
        if options.get(name) is not None and not isinstance(options[name], tuple):
            options[name] = tuple(options[name])
    for name in ("out", "results", "data_root"):
        if options.get(name) is not None:
            options[name] = Path(options[name])
    return RunRequest(method=method, overrides={k: str(v) for k, v in overrides.items()}, **options)


def plan(method: str, **options: Any) -> RunPlan:
    """Check a run and resolve what it names, without touching data (``mtbench run --dry-run``)."""
    return _plan(request(method, **options))


def run(
    target: RunPlan | str, *, notice: Callable[[str], None] | None = print, **options: Any
) -> RunResult:
    """Run a plan (or a method with ``mtbench run``'s options) end to end and store its result.

    Trains the stl reference first when Δm needs it and none is stored; the run folder is the plan's
    ``out`` (default ``runs/<run id>``); the result is also written into the results store.
    """
    the_plan = target if isinstance(target, RunPlan) else plan(target, **options)
    return execute_plan(the_plan, notice).result


__all__: Iterable[str] = ["plan", "run", "request", "RunPlan", "RunRequest", "RunResult"]
