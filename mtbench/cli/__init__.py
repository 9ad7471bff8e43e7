"""The ``mtbench`` command line: a thin typer layer over library calls, one module per command group.

Each command parses its options, calls the library and prints through :mod:`mtbench.cli.render`;
long work shows :func:`mtbench.cli.progress.progress_bar`.
"""

from __future__ import annotations

import typer

from mtbench.cli import bench, data, export, leaderboard, ls, results, run, sweep

app = typer.Typer(
    name="mtbench",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    help="""Benchmark suite for multi-task learning with learned structured sparsity.

Examples:

* `mtbench ls tasks` — every task, its metrics and their directions
* `mtbench data synth nyuv2-synth --out data/nyu-synth` — a synthetic NYU-like set in the real layout
* `mtbench data verify nyuv2 --root data/nyu-synth` — read every sample through the real reader
* `mtbench data prepare nyuv2 --from /data/nyuv2` — convert a real copy into the local Arrow cache
* `mtbench run meta-sparsity --unseen depth` — meta-train, then evaluate seen and held-out tasks
* `mtbench results ls` — what the results store holds; `mtbench results show RUN_ID` — one result
""",
)
app.add_typer(data.app, name="data")
app.add_typer(bench.app, name="bench")
app.add_typer(leaderboard.app, name="leaderboard")
app.add_typer(results.app, name="results")
app.command("ls")(ls.ls)
app.command("export")(export.export)
app.command("run")(run.run)
app.command("sweep")(sweep.sweep)


def main() -> None:
    """Entry point of the ``mtbench`` script and of ``python -m mtbench``."""
    app()
