"""Leaderboard tables (Markdown, CSV, static HTML) generated from stored result files.

One table per data set and protocol (budget, seen and held-out tasks): a row per method *variant* (the method
name plus the ``--set`` overrides it ran with, e.g. ``fixed-lambda (lam=0.01)``) with every number as mean ±
the half-width of its 95 % confidence interval over seeds (`mtbench.stats`), Δm against a fixed reference
(stl's mean over seeds; stl's run of the same seed with ``build --reference per-seed``), every row's paired
per-seed difference to ``ew`` and ranks from paired tests. The fixed-λ variants trace, per seed, a front of Δm
against cost (compact FLOPs, parameters, or group sparsity); every other variant is compared with its own
seed's front at its own cost, paired over seeds.

The package's parts: `model` (results grouped into rows of per-seed cells, the reference, paired ranks),
`front` (cost axes, per-seed fronts, matched comparisons), `columns` (the one definition of every column),
`render` (Markdown, CSV and HTML writers), `plot` (the SVG pictures) and `files` (`build` and `publish`).
A cell whose inputs are incomplete is left blank, never averaged over what happens to be present. Synthetic
and real data never share a table.
"""

from mtbench.leaderboard.files import GENERATED_FILE, _ExchangeUnsupported, build, build_files, publish
from mtbench.leaderboard.front import (
    AXES,
    FrontComparison,
    MatchedPoint,
    front_comparisons,
    front_delta_at,
    front_rows,
    interpolate_front,
    matched_points,
    paired_to_front,
)
from mtbench.leaderboard.model import (
    REFERENCE_MODES,
    Cell,
    Group,
    Row,
    collect,
    lambda_summary,
    rows,
    separation,
    variant_label,
)
from mtbench.leaderboard.plot import _spread, plot_family
from mtbench.leaderboard.render import (
    ASSETS,
    GENERATED,
    asset_text,
    markdown_text,
    render_csv,
    render_html,
    render_index,
    render_markdown,
    trivial_checks,
)
from mtbench.leaderboard.rules import RULES, Breach, Table, breaches, require_comparable

__all__ = [
    "ASSETS",
    "AXES",
    "GENERATED",
    "GENERATED_FILE",
    "REFERENCE_MODES",
    "RULES",
    "Breach",
    "Cell",
    "FrontComparison",
    "Group",
    "MatchedPoint",
    "Row",
    "Table",
    "_ExchangeUnsupported",
    "_spread",
    "asset_text",
    "breaches",
    "build",
    "build_files",
    "collect",
    "front_comparisons",
    "front_delta_at",
    "front_rows",
    "interpolate_front",
    "lambda_summary",
    "markdown_text",
    "matched_points",
    "paired_to_front",
    "plot_family",
    "publish",
    "render_csv",
    "render_html",
    "render_index",
    "render_markdown",
    "require_comparable",
    "rows",
    "separation",
    "trivial_checks",
    "variant_label",
]
