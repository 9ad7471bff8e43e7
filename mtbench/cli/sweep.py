"""``mtbench sweep``: a grid of runs on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtbench.cli.common import reports_errors
from mtbench.cli.render import console, err_console


@reports_errors
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML); examples in leaderboard/specs/.")],
    results: Annotated[
        Path | None, typer.Option(help="Results store the driver writes (default $MTBENCH_RESULTS or ./results).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to use (HEAD:6379, or auto); default $RAY_ADDRESS, else a local instance."),
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance (default: all cores).")] = None,
    cpus_per_cell: Annotated[int, typer.Option(help="CPUs (and torch threads) per cell.")] = 1,
    gpus_per_cell: Annotated[
        float | None, typer.Option(help="GPUs per cell (default: 1 for paper-budget cells, else 0).")
    ] = None,
    logs: Annotated[Path, typer.Option(help="Folder for the logs of failed cells.")] = Path("sweep-logs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and what is stored; run nothing.")] = False,
) -> None:
    """Run a grid of `mtbench run`s (methods × options × data sets × held-out tasks × budgets × seeds) on Ray.

    Each cell is one `mtbench run` subprocess in a Ray task (one CPU and one torch thread each; a GPU each
    for the paper budget); stl references run first; the driver writes every result into --results, and a
    cell already stored there is skipped, so a killed sweep resumes. Exits 1 if any cell failed.

    Spec keys: `schema_version = 1`, `budgets = [...]`, `seeds = [...]`, `[[datasets]]` with `name`,
    `unseen = [...]` and optional `data_root` (relative to the spec), `[methods.NAME]` with
    `option = value` or `option = [grid]` (or `[[methods.NAME]]` for several grids).

    Examples: `mtbench sweep leaderboard/specs/celebamask-quick-headline.toml --results results`,
    `mtbench sweep SPEC --address HEAD:6379`
    """
    from mtbench.results import default_results_dir
    from mtbench.sweep import describe, load_spec, print_report, run_sweep

    loaded = load_spec(spec)
    store = results or default_results_dir()
    if dry_run:
        cells = describe(loaded, store)
        for cell, stored in cells:
            console.print(f"{'stored ' if stored else 'to run '} {cell.label}", highlight=False, markup=False)
        stored_count = sum(stored for _, stored in cells)
        console.print(f"{len(cells)} cells: {len(cells) - stored_count} to run, {stored_count} stored in {store}")
        return
    report = run_sweep(
        loaded,
        store,
        address=address,
        num_cpus=num_cpus,
        cpus_per_cell=cpus_per_cell,
        gpus_per_cell=gpus_per_cell,
        logs_dir=logs,
        console=err_console,
    )
    print_report(report, console, err_console)
    if not report.ok:
        raise typer.Exit(1)
