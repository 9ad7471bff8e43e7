"""The one definition of every table's columns: what the Markdown, HTML and CSV writers (`mtbench.leaderboard.render`)
all read. A new column is one `Column` here: its header, its text, its sort value on the page and its CSV fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mtbench.leaderboard.front import AXES, DEFAULT_AXIS, FrontComparison, MatchedPoint
from mtbench.leaderboard.lambda_curve import CurvePoint
from mtbench.leaderboard.model import COMPARE_WITH, Cell, Group, Row, signed
from mtbench.stats import Paired

T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column: ``header`` (None: CSV only), the shown ``text``, the HTML sort value (default: the text) and
    the CSV fields (name, value) it contributes (none: shown only)."""

    header: str | None
    text: Callable[[T], str] = lambda _: ""
    sort: Callable[[T], str] | None = None
    csv: Sequence[tuple[str, Callable[[T], str]]] = ()


@dataclass
class Section(Generic[T]):
    """A titled table: its columns, its items (one per row) and the note under it."""

    title: str
    columns: list[Column[T]]
    items: list[T]
    note: str = ""
    html_id: str = ""
    level: int = 3  # Markdown heading level
    extra: list[str] = field(default_factory=list)  # paragraphs after the note


def number(value: float | None, digits: int = 6) -> str:
    """A CSV number: rounded to ``digits`` decimals, blank for None."""
    return "" if value is None else repr(round(value, digits) or 0.0)  # no "-0.0"


def _six_digits(value: float | None) -> str:
    """A CSV number with 6 significant digits (λ, training FLOPs), blank for None."""
    return "" if value is None else repr(float(f"{value:.6g}"))


def sort_number(value: float | None) -> str:
    return "" if value is None else f"{value:.8g}"


def _bounds(cell: Cell) -> tuple[str, str]:
    ci = cell.ci95
    return ("", "") if ci is None else (number(ci[0]), number(ci[1]))


def cell_column(
    header: str | None, name: str, get: Callable[[T], Cell], digits: int = 4, ranged: bool = False
) -> Column[T]:
    """A number over seeds: mean ± 95 % CI half-width (with the seeds' min–max where ``ranged`` and the values
    are split); CSV ``name``, ``name_ci95_low``/``_high``, ``name_n``, ``name_std``."""
    return Column(
        header,
        (lambda item: get(item).text_with_range(digits)) if ranged else (lambda item: get(item).text(digits)),
        lambda item: sort_number(get(item).mean),
        [
            (name, lambda item: number(get(item).mean)),
            (f"{name}_ci95_low", lambda item: _bounds(get(item))[0]),
            (f"{name}_ci95_high", lambda item: _bounds(get(item))[1]),
            (f"{name}_n", lambda item: "" if get(item).n is None else str(get(item).n)),
            (f"{name}_std", lambda item: number(get(item).std)),
        ],
    )


def paired_text(paired: Paired | None, digits: int = 2) -> str:
    """``+1.23 ± 0.45 (4/5)``: mean paired difference ± its 95 % half-width (wins/seeds); ``*`` where it
    excludes 0; blank without a comparison."""
    if paired is None:
        return ""
    interval = paired.interval
    spread = "" if interval.half_width is None else f" ± {interval.half_width:.{digits}f}"
    mark = " *" if paired.separates else ""
    return f"{signed(interval.mean, digits)}{spread} ({paired.wins}/{paired.n}){mark}"


def paired_column(header: str | None, name: str, get: Callable[[T], Paired | None]) -> Column[T]:
    """A paired difference (`paired_text`); CSV ``name``, ``_ci95_low``/``_high``, ``_wins``, ``_n``."""

    def part(item: T, which: str) -> str:
        paired = get(item)
        if paired is None:
            return ""
        interval = paired.interval
        return {
            "mean": number(interval.mean),
            "ci95_low": number(interval.low),
            "ci95_high": number(interval.high),
            "wins": str(paired.wins),
            "n": str(paired.n),
        }[which]

    return Column(
        header,
        lambda item: paired_text(get(item)),
        lambda item: part(item, "mean"),
        [(name, lambda i: part(i, "mean"))]
        + [(f"{name}_{k}", lambda i, k=k: part(i, k)) for k in ("ci95_low", "ci95_high", "wins", "n")],
    )


def _flops_ratio(row: Row, table: list[Row]) -> str:
    """The row's mean training FLOPs over ew's (blank without both)."""
    ew = next((r for r in table if r.method == COMPARE_WITH), None)
    if ew is None or ew.train_flops.mean is None or row.train_flops.mean is None:
        return ""
    return f"{row.train_flops.mean / ew.train_flops.mean:.2f}"


def _dead_text(row: Row) -> str:
    """``0`` when no seed ends with a dead layer, else the per-seed counts (``0 1 0 1 1``): a bimodal outcome."""
    if not row.dead:
        return ""
    return "0" if not any(row.dead) else " ".join(str(d) for d in row.dead)


def _arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def main_columns(group: Group, table: list[Row]) -> list[Column[Row]]:
    """The leaderboard's columns for ``group`` (schema-3 tables have the joint score and the protocol's columns)."""
    joint = group.scored_jointly
    primary = "joint" if joint else "seen"
    outside = group.outside_delta_m
    identity: list[Column[Row]] = [
        Column(None, csv=[("dataset", lambda r: group.dataset)]),
        Column(None, csv=[("synthetic", lambda r: str(group.synthetic))]),
        Column(None, csv=[("budget", lambda r: group.protocol.budget)]),
        Column(None, csv=[("unseen", lambda r: "+".join(group.protocol.unseen))]),
        Column(None, csv=[("reference", lambda r: group.reference_mode)]),
        Column(
            "rank",
            lambda r: r.rank_text,
            lambda r: "" if r.rank is None else str(r.rank.position),
            [
                ("rank", lambda r: "" if r.rank is None else str(r.rank.position)),
                ("rank_tied", lambda r: "" if r.rank is None else str(r.rank.tied)),
            ],
        ),
        Column("method", lambda r: r.method, csv=[("method", lambda r: r.method)]),
        Column(None, csv=[("base_method", lambda r: r.base)]),
        Column("n", lambda r: str(len(r.seeds)), csv=[("seeds", lambda r: str(len(r.seeds)))]),
    ]
    metrics = [
        cell_column(
            f"{task} {metric} {_arrow(higher)}{'†' if (task, metric) in outside else ''}",
            f"{task}/{metric}",
            lambda r, key=(task, metric): r.metrics[key],
        )
        for task, metric, higher, _ in group.metric_columns
    ]
    deltas: list[Column[Row]] = [
        cell_column(f"Δm {primary} % ↑", f"delta_m_{primary}", lambda r: r.primary, 2, ranged=True),
        paired_column(
            f"Δm {primary} − {COMPARE_WITH} (paired)", f"delta_m_{primary}_minus_{COMPARE_WITH}", lambda r: r.vs_ew
        ),
    ]
    if joint:
        deltas.append(cell_column("Δm adapted seen % ↑", "delta_m_seen", lambda r: r.delta_seen, 2, ranged=True))
    deltas.append(cell_column("Δm held-out % ↑", "delta_m_unseen", lambda r: r.delta_unseen, 2, ranged=True))
    if joint:
        deltas.append(cell_column("Δm joint, validation % ↑", "delta_m_joint_val", lambda r: r.delta_joint_val, 2))
        deltas.append(cell_column(None, "delta_m_seen_val", lambda r: r.delta_seen_val, 2))
    cost: list[Column[Row]] = [
        cell_column("FLOPs % of dense", "flops_pct", lambda r: r.flops_pct, 1, ranged=True),
        cell_column("params % of dense", "params_pct", lambda r: r.params_pct, 1, ranged=True),
        cell_column("group sparsity %", "group_sparsity_pct", lambda r: r.sparsity, 1, ranged=True),
    ]
    if joint:
        cost.append(
            Column(
                "dead layers (per seed)",
                _dead_text,
                lambda r: str(sum(r.dead)),
                [("dead_layers_per_seed", lambda r: " ".join(map(str, r.dead)))],
            )
        )
    cost += [
        Column(
            "λ start → end",
            lambda r: r.lam_text,
            lambda r: sort_number(r.lam_end.mean),
            [
                ("lambda_start", lambda r: _six_digits(r.lam_start.mean)),
                ("lambda_end", lambda r: _six_digits(r.lam_end.mean)),
            ],
        ),
        Column(
            "params (compact)",
            lambda r: "" if r.params.mean is None else f"{r.params.mean:,.0f}",
            lambda r: sort_number(r.params.mean),
            [("params_compact", lambda r: number(r.params.mean))],
        ),
        cell_column("GFLOPs (compact)", "gflops_compact", lambda r: r.gflops, 3),
    ]
    if joint:
        cost.append(
            Column(
                "training FLOPs × ew",
                lambda r: _flops_ratio(r, table),
                lambda r: _flops_ratio(r, table),
                [
                    ("training_flops", lambda r: _six_digits(r.train_flops.mean)),
                    ("training_flops_x_ew", lambda r: _flops_ratio(r, table)),
                ],
            )
        )
    return identity + metrics + deltas + cost


def front_columns(primary: str) -> list[Column[FrontComparison]]:
    """The "against the fixed-λ front" table: cost, Δm, and the paired difference to the front on each axis."""
    axis = AXES[DEFAULT_AXIS]
    columns: list[Column[FrontComparison]] = [
        Column("variant", lambda c: c.row.method),
        Column("n", lambda c: str(len(c.row.seeds))),
        Column(axis.short, lambda c: c.row.flops_pct.text_with_range(1)),
        Column("params %", lambda c: c.row.params_pct.text_with_range(1)),
        Column("group sparsity %", lambda c: c.row.sparsity.text_with_range(1)),
        Column(f"Δm {primary} %", lambda c: c.row.primary.text_with_range(2)),
    ]
    columns += [
        Column(f"− front at matched {a.short}", lambda c, name=name: paired_text(c.on_axis[name]))
        for name, a in AXES.items()
    ]
    columns += [
        Column("Δm held-out %", lambda c: c.row.delta_unseen.text_with_range(2)),
        Column(f"held-out − front at matched {axis.short}", lambda c: paired_text(c.unseen)),
    ]
    return columns


def matched_columns(primary: str) -> list[Column[MatchedPoint]]:
    """The matched-cost table: a family's curve against the front at fixed points of each axis."""
    return [
        Column("family", lambda m: m.family),
        Column("axis", lambda m: m.axis.short),
        Column("at", lambda m: f"{m.point:g} %"),
        Column(f"family Δm {primary} %", lambda m: m.family_delta.text(2)),
        Column("family − front (paired)", lambda m: paired_text(m.difference)),
    ]


CURVE_COLUMNS: list[Column[CurvePoint]] = [
    Column(
        "λ",
        lambda p: "0" if p.lam == 0 else f"{p.lam:g}",
        lambda p: sort_number(p.lam),
        [("lam", lambda p: repr(p.lam))],
    ),
    Column("variant", lambda p: p.row.method),
    cell_column("Δm joint, validation % ↑", "delta_m_joint_val", lambda p: p.score, 2),
    paired_column("− best λ (paired, validation)", "to_best", lambda p: p.to_best),
]
