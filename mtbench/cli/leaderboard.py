"""``mtbench leaderboard …``: build and publish the leaderboard tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtbench.cli.common import reports_errors
from mtbench.cli.render import console

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Build and publish the leaderboard tables.")

LeaderboardDir = Annotated[Path, typer.Option("--out", help="Leaderboard folder.")]


@app.command("build")
@reports_errors
def leaderboard_build(
    results: Annotated[
        Path | None, typer.Option(help="Result files to tabulate (default: leaderboard/results).")
    ] = None,
    out: LeaderboardDir = Path("leaderboard"),
    reference: Annotated[
        str,
        typer.Option(
            help="Δm's reference: `fixed` (stl's metrics averaged over its seeds, what is published) or "
            "`per-seed` (stl's run of the same seed; its noise enters every row). Named in each table's notes."
        ),
    ] = "fixed",
) -> None:
    """Regenerate the Markdown, CSV and HTML tables, one per data set and protocol.

    Every result file is checked first (readable, known schema, well-formed, safe names); a results folder
    with a MANIFEST.json (the leaderboard's own, written by `publish`) must match it, so a result changed
    or added by hand is refused. On any error nothing changes. The new tables replace the old ones in one
    atomic swap: the folder holds the complete old set or the complete new set, even if interrupted.

    Examples: `mtbench leaderboard build`; the per-seed reference into another folder:
    `mtbench leaderboard build --results leaderboard/results --out /tmp/per-seed --reference per-seed`
    """
    from mtbench.leaderboard import build

    written = build(results or out / "results", out, reference=reference)
    console.print(f"wrote {len(written)} files under {out}/ (index: {out / 'README.md'})")


@app.command("publish")
@reports_errors
def leaderboard_publish(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run folders (or result.json files).", show_default=False)
    ] = None,
    out: LeaderboardDir = Path("leaderboard"),
    record_existing: Annotated[
        bool,
        typer.Option(
            "--record-existing",
            help="Accept the result files already in leaderboard/results as they are now and record all of "
            "them in results/MANIFEST.json (a store without a manifest, or a result edited or removed on "
            "purpose). Check them first, e.g. with `git diff leaderboard/results`.",
        ),
    ] = False,
    allow_incomparable: Annotated[
        bool,
        typer.Option(
            "--allow-incomparable",
            help="Publish even where a table would break a rule of comparison (smoke budget, no stl of the "
            "same seed, too few seeds, mixed schema or protocol versions); the table is then marked NOT "
            "COMPARABLE on its pages and in the index.",
        ),
    ] = False,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="The sweep spec (TOML) the results come from: a cell of a table it covers needs every seed "
            "of the spec (without it: at least 3 seeds).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Copy selected runs' result files into leaderboard/results/, record their hashes, rebuild the tables.

    Each input and the results already published are checked before anything is written. The SHA-256 of
    each published result goes into leaderboard/results/MANIFEST.json; `build` refuses a result that does
    not match it. A publish after which a table cannot be compared is refused, naming the file and the rule:
    a smoke-budget result, a result without stl of the same seed, a variant with fewer than 3 seeds (the
    spec's seeds with `--spec`), results of different schema or protocol versions in one table;
    `--allow-incomparable` publishes anyway into a table marked NOT COMPARABLE.

    Examples: `mtbench leaderboard publish runs/2026*-meta-sparsity-*`,
    `mtbench leaderboard publish --record-existing` (record the committed results in the manifest),
    `mtbench leaderboard publish results/nyuv2-synth/*.json --spec leaderboard/specs/nyuv2-quick-headline.toml`
    """
    from mtbench.leaderboard import publish

    loaded = None
    if spec is not None:
        from mtbench.sweep_spec import load_spec

        loaded = load_spec(spec)
    stored = publish(
        runs or [], out, record_existing=record_existing, allow_incomparable=allow_incomparable, spec=loaded
    )
    recorded = " and recorded the existing results" if record_existing else ""
    console.print(
        f"published {len(stored)} result(s) into {out / 'results'}{recorded}; manifest "
        f"{out / 'results' / 'MANIFEST.json'}; rebuilt the tables"
    )
    if allow_incomparable:
        console.print(f"tables that break a rule of comparison are marked NOT COMPARABLE (see {out / 'README.md'})")
