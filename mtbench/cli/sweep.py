"""``mtbench sweep``: a grid of runs on Ray; the progress view and the report are drawn here, the engine is
`mtbench.sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mtbench.cli.common import reports_errors
from mtbench.cli.render import console, err_console

if TYPE_CHECKING:
    from mtbench.sweep import CellOutcome, Counts, SweepReport


class SweepView:
    """A rich progress bar over the cells (done / running / failed / skipped, ETA) and one line per finished cell;
    a `mtbench.sweep.SweepObserver`."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    @staticmethod
    def _counts(c: Counts) -> str:
        return f"done {c.done} · running {c.running} · failed {c.failed} · skipped {c.skipped}"

    def started(self, counts: Counts) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
        )
        self._progress.start()
        self._task = self._progress.add_task("sweep", total=counts.total, counts=self._counts(counts))

    def updated(self, counts: Counts) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=counts.done + counts.failed, counts=self._counts(counts))

    def finished(self, outcome: CellOutcome, counts: Counts) -> None:
        seconds = f"{outcome.seconds:.1f} s" if outcome.seconds is not None else "—"
        say = self._progress.console.print if self._progress is not None else self.console.print
        say(f"{'✓' if outcome.status == 'done' else '✗'} {outcome.status:6} {outcome.cell.label} ({seconds})"
            + (f": {outcome.reason}" if outcome.reason else ""), highlight=False, markup=False)
        for warning in outcome.warnings:
            say(f"  warning: {warning}", highlight=False, markup=False)
        self.updated(counts)

    def stopped(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def summary_table(report: SweepReport) -> Any:
    """A rich table: cell, status, seconds, Δm on the seen tasks (all-metric average, % vs stl)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="sweep summary", title_justify="left")
    for column, justify in (("cell", "left"), ("status", "left"), ("seconds", "right"), ("Δm seen %", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    style = {"done": "green", "failed": "bold red", "skipped": "dim"}
    for outcome in report.outcomes:
        delta = outcome.delta_seen
        table.add_row(
            escape(outcome.cell.label),
            f"[{style.get(outcome.status, '')}]{outcome.status}[/]",
            f"{outcome.seconds:.1f}" if outcome.seconds is not None else "—",
            f"{delta:+.2f}" if delta is not None else "—",
        )
    return table


def print_report(report: SweepReport, console: Any, err_console: Any, tail_lines: int = 15) -> None:
    """The summary table, the failed cells' log tails and the one-line count."""
    from rich.markup import escape

    console.print(summary_table(report))
    for outcome in report.outcomes:
        if outcome.status != "failed":
            continue
        label, reason = escape(outcome.cell.label), escape(outcome.reason)
        err_console.print(f"[bold red]failed:[/] {label}: {reason}", highlight=False)
        if outcome.log_tail:
            lines = outcome.log_tail.rstrip().splitlines()[-tail_lines:]
            err_console.print("\n".join("    " + line for line in lines), highlight=False, markup=False)
        if outcome.log_file is not None:
            err_console.print(f"    full log: {outcome.log_file}", highlight=False, markup=False)
    console.print(report.line(), highlight=False)


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
        float | None, typer.Option(help="GPUs per cell (default: 1 for cells of a GPU budget, e.g. paper, else 0).")
    ] = None,
    logs: Annotated[Path, typer.Option(help="Folder for the logs of failed cells.")] = Path("sweep-logs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and what is stored; run nothing.")] = False,
) -> None:
    """Run a grid of `mtbench run`s (methods × options × data sets × held-out tasks × budgets × seeds) on Ray.

    Each cell is one run request executed through the library in a fresh Ray worker (one CPU and one torch
    thread each; a GPU each for a GPU budget such as paper); stl references run first; the driver writes every
    result into --results, and a cell already stored there is skipped, so a killed sweep resumes. Exits 1 if any
    cell failed.

    Spec keys: `schema_version = 1`, `budgets = [...]`, `seeds = [...]`, `[[datasets]]` with `name`,
    `unseen = [...]` and optional `data_root` (relative to the spec), `[methods.NAME]` with
    `option = value` or `option = [grid]` (or `[[methods.NAME]]` for several grids); optional
    `plugins = ["my_method.py", "mypackage.methods"]` (files relative to the spec, or installed modules): a
    plugin method is swept, stored and published like a built-in one.

    Examples: `mtbench sweep leaderboard/specs/celebamask-quick-headline.toml --results results`,
    `mtbench sweep SPEC --address HEAD:6379`
    """
    from mtbench.results import default_results_dir
    from mtbench.sweep import describe, run_sweep
    from mtbench.sweep_spec import load_spec

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
        observer=SweepView(err_console),
    )
    print_report(report, console, err_console)
    if not report.ok:
        raise typer.Exit(1)
