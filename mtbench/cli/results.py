"""``mtbench results ls/show``: what a results store holds, without opening JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtbench.cli.common import reports_errors
from mtbench.cli.render import console

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Browse a results store.")

ResultsOption = Annotated[
    Path | None, typer.Option("--results", help="Results store (default $MTBENCH_RESULTS or ./results).")
]


def _store(results: Path | None) -> Path:
    from mtbench.results import default_results_dir

    return results or default_results_dir()


@app.command("ls")
@reports_errors
def results_ls(
    results: ResultsOption = None,
    dataset: Annotated[str | None, typer.Option(help="Only this data set.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
) -> None:
    """One line per stored result: data set, budget, held-out tasks, method variant, seed, Δm, schema, threads.

    Examples: `mtbench results ls`, `mtbench results ls --results leaderboard/results --method prune`
    """
    from mtbench.results import browse

    store = _store(results)
    runs, unreadable = browse(store, dataset=dataset, method=method)
    table = Table(title=f"{len(runs)} result(s) in {store}", title_justify="left")
    numeric = ("seed", "Δm % (own stl)", "schema", "threads")
    for column in ("data set", "budget", "held out", "method", *numeric, "run id"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for run in runs:
        result = run.result
        table.add_row(
            result.dataset.name + (" (synthetic)" if result.dataset.synthetic else ""),
            result.protocol.budget,
            ", ".join(result.protocol.unseen) or "none",
            run.variant,
            str(result.seed),
            "" if run.delta_m is None else f"{run.delta_m:+.2f}",
            str(result.schema_version),
            str(result.threads),
            result.run_id,
        )
    console.print(table)
    for bad in unreadable:
        console.print(f"[red]not a valid result:[/] {bad.path}: {bad.reason}", highlight=False)


@app.command("show")
@reports_errors
def results_show(
    which: Annotated[str, typer.Argument(help="A result file, or a run id (a unique start of one).")],
    results: ResultsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """One stored result: what ran, on what, how it was scored, its metrics and Δm.

    Examples: `mtbench results show 20261207-1709`, `mtbench results show results/nyuv2-synth/ew--seed0--….json`
    """
    from mtbench.results import find_stored

    run = find_stored(_store(results), which)
    result = run.result
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    console.print(f"[bold]{result.run_id}[/] ({run.path})", highlight=False)
    environment = result.environment
    lines = [
        ("method", f"{run.variant}; config {json.dumps(result.method.config, sort_keys=True)}"),
        ("data set", f"{result.dataset.name} ({'synthetic' if result.dataset.synthetic else 'real'})"),
        ("protocol", f"budget {result.protocol.budget}; seen {', '.join(result.protocol.seen)}; held out "
                     f"{', '.join(result.protocol.unseen) or 'none'}"),
        ("seed / schema", f"{result.seed} / {result.schema_version}"),
        ("machine", f"{environment.device or '?'}, {result.threads} thread(s), {environment.cpu_model or '?'}"),
        ("created", result.created),
    ]
    for name, value in lines:
        console.print(f"{name:>14}: {value}", highlight=False)
    table = Table(title="metrics (test split)", title_justify="left")
    for column in ("task", "role", "metric", "adapted", "joint"):
        table.add_column(column)
    for task, outcome in result.tasks.items():
        for metric, value in outcome.metrics.items():
            joint = (outcome.joint or {}).get(metric)
            arrow = "↑" if value.higher_is_better else "↓"
            table.add_row(task, "seen" if outcome.seen else "held out", f"{metric} {arrow}", f"{value.value:.4f}",
                          "" if joint is None else f"{joint.value:.4f}")
    console.print(table)
    delta = result.delta_m
    if delta is not None and not delta.unavailable:
        parts = [f"{name} {value:+.2f}" for name, role in (("joint", "joint"), ("seen", "seen"), ("held-out", "unseen"))
                 if (value := delta.overall(role)) is not None]
        console.print(f"Δm % against {delta.reference_method} ({delta.reference_run}): {', '.join(parts)}",
                      highlight=False)
    if result.sparsity is not None and result.sparsity.group_sparsity is not None:
        console.print(f"group sparsity {100 * result.sparsity.group_sparsity:.1f} %", highlight=False)
