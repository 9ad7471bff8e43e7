"""The page's pictures, as plain inline SVG: Δm against a cost axis (one dot per seed behind each variant's mean,
the fixed-λ front through its means) and the per-layer sparsity bars."""

from __future__ import annotations

import html
import math

from mtbench.leaderboard.front import AXES, Axis, front_rows
from mtbench.leaderboard.model import DENSE_BELOW_PCT, Row, signed, significant

PLOT_COLOURS = {"front": "#d95f02", "sparse": "#1f77b4", "dense": "#9a9a9a"}


def plot_family(row: Row, axis: Axis | None = None) -> str | None:
    """"front", "sparse" or "dense" for a row with a cost on ``axis`` and a Δm mean; None if it cannot be drawn."""
    axis = axis or AXES["groups"]
    if axis.cell(row).mean is None or row.primary.mean is None or row.sparsity.mean is None:
        return None
    if row.family == "front":
        return "front"
    if row.family == "sparse" or row.sparsity.mean >= DENSE_BELOW_PCT:
        return "sparse"
    return "dense"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) + 0.0 for i in range(int((high - first) / step + 1e-9) + 1)]


def _spread(wanted: list[float], gap: float) -> list[float]:
    """Label positions as close to ``wanted`` as possible while at least ``gap`` apart (keeps the order)."""
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    placed = [0.0] * len(wanted)
    previous = -math.inf
    for i in order:
        placed[i] = max(wanted[i], previous + gap)
        previous = placed[i]
    return placed


def _fit_labels(wanted: list[float], gap: float, high: float) -> list[float]:
    """Label positions at least ``gap`` apart (via ``_spread``), pushed back up where they would pass ``high``."""
    placed = _spread(wanted, gap)
    ceiling = high
    for i in sorted(range(len(placed)), key=lambda i: -placed[i]):
        placed[i] = min(placed[i], ceiling)
        ceiling = placed[i] - gap
    return placed


def _front_label(row: Row) -> str:
    return f"λ={significant(row.lam_end.mean)}" if row.lam_end.mean is not None else row.method


def scatter_svg(table: list[Row], axis: Axis, plot_id: str = "plot") -> str:
    """Δm (the primary score) against ``axis``, plain inline SVG with a caption.

    Every seed is a small translucent dot in its variant's colour; each variant's mean is a larger point on
    top (tooltip: the mean and the per-seed values). The fixed-λ front is a polyline through its means, each
    point labelled with its λ; other sparse variants are labelled; dense methods are small grey points
    (tooltips only, ``ew`` labelled) listed with their Δm in the caption.
    """
    plotted = [(row, family) for row in table if (family := plot_family(row, axis)) is not None]
    name = plotted[0][0].primary_name if plotted else "seen"  # joint for schema-3 tables
    width, height = 680, 420
    left, right, top, bottom = 56, 170, 48, 48
    if not plotted:
        return (
            f'<svg id="{plot_id}" width="{width}" height="60" role="img"><text x="10" y="30">No method has both '
            f"a Δm and a value of {html.escape(axis.label)} yet.</text></svg>"
        )
    front = sorted(
        (row for row in front_rows(row for row, _ in plotted)), key=lambda r: (axis.cell(r).mean, r.method)
    )
    xs = [x for row, _ in plotted for x in axis.cell(row).values]
    ys = [y for row, _ in plotted for y in row.primary.values]
    x_low, x_high = 0.0, max(100.0, max(xs))
    y_low, y_high = min(min(ys), 0.0), max(max(ys), 0.0)
    y_span = (y_high - y_low) or 1.0
    y_low, y_high = y_low - 0.08 * y_span, y_high + 0.08 * y_span

    def sx(v: float) -> float:
        return left + (min(max(v, x_low), x_high) - x_low) / (x_high - x_low) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - (v - y_low) / (y_high - y_low) * (height - top - bottom)

    plot_right = width - right
    parts = [
        f'<svg id="{plot_id}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Δm {name} against {html.escape(axis.label)}" font-family="sans-serif">',
    ]
    for tick in _ticks(y_low, y_high):
        parts.append(
            f'<line x1="{left}" y1="{sy(tick):.1f}" x2="{plot_right}" y2="{sy(tick):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end" font-size="11">{tick:g}</text>'
        )
    for tick in (0, 25, 50, 75, 100):
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">{tick}</text>'
        )
    parts += [
        f'<line x1="{left}" y1="{sy(0):.1f}" x2="{plot_right}" y2="{sy(0):.1f}" stroke="#999" stroke-dasharray="4"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{plot_right}" y2="{height - bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#333"/>',
        f'<text x="{(left + plot_right) / 2}" y="{height - 12}" text-anchor="middle" font-size="12">'
        f"{html.escape(axis.label)}</text>",
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">Δm {name} (%) vs stl</text>',
    ]
    parts += _legend(left)
    for row, family in plotted:  # the seeds first, behind every mean
        cost, delta = axis.cell(row).by_seed, row.primary.by_seed
        for seed in sorted(set(cost) & set(delta)):
            parts.append(
                f'<circle class="seed" data-family="{family}" cx="{sx(cost[seed]):.1f}" cy="{sy(delta[seed]):.1f}" '
                f'r="2.5" fill="{PLOT_COLOURS[family]}" opacity="0.35"><title>{html.escape(row.method)}, seed {seed}: '
                f"Δm {signed(delta[seed], 2)} %, {html.escape(axis.short)} {cost[seed]:.1f}</title></circle>"
            )
    colour = PLOT_COLOURS["front"]
    if len(front) >= 2:
        path = " ".join(f"{sx(axis.cell(r).mean):.1f},{sy(r.primary.mean):.1f}" for r in front)
        parts.append(f'<polyline class="front" points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')

    labels: list[tuple[float, float, str, int]] = []  # point x, point y (pixels), text, font size
    for row, family in sorted(plotted, key=lambda item: ("dense", "sparse", "front").index(item[1])):
        x, y = sx(axis.cell(row).mean), sy(row.primary.mean)
        radius = {"front": 4.5, "sparse": 5, "dense": 3}[family]
        lam = f", λ {row.lam_text}" if row.lam_text else ""
        seeds = ", ".join(signed(v, 1) for v in row.primary.values)
        parts.append(
            f'<circle class="point" data-family="{family}" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" '
            f'fill="{PLOT_COLOURS[family]}" stroke="#fff" stroke-width="1"><title>{html.escape(row.method)}: '
            f"Δm {signed(row.primary.mean, 2)} % (seeds {seeds}), {html.escape(axis.short)} "
            f"{axis.cell(row).mean:.1f}{html.escape(lam)}</title></circle>"
        )
        if family == "front":
            labels.append((x, y, _front_label(row), 10))
        elif family == "sparse" or row.method == "ew":
            labels.append((x, y, row.method, 11))
    placed = _fit_labels([y + 4 for _, y, _, _ in labels], gap=12.0, high=height - bottom - 4)
    for (x, y, text, size), text_y in zip(labels, placed):
        label_x = x + 14
        parts.append(
            f'<line x1="{x + 4:.1f}" y1="{y:.1f}" x2="{label_x - 2:.1f}" y2="{text_y - 4:.1f}" stroke="#bbb"/>'
            f'<text x="{label_x:.1f}" y="{text_y:.1f}" font-size="{size}" stroke="#fff" stroke-width="3" '
            f'paint-order="stroke">{html.escape(text)}</text>'
        )
    parts.append("</svg>")
    return '<figure class="plot">' + "\n".join(parts) + _dense_caption(plotted) + "</figure>"


def _legend(left: float) -> list[str]:
    """One legend line above the plot: front, sparse methods, dense methods, seeds."""
    front, sparse, dense = (PLOT_COLOURS[k] for k in ("front", "sparse", "dense"))
    y = 20
    return [
        f'<g class="legend" font-size="11">'
        f'<line x1="{left}" y1="{y}" x2="{left + 24}" y2="{y}" stroke="{front}" stroke-width="1.5"/>'
        f'<circle cx="{left + 12}" cy="{y}" r="4" fill="{front}"/>'
        f'<text x="{left + 30}" y="{y + 4}">fixed-λ front (means)</text>'
        f'<circle cx="{left + 170}" cy="{y}" r="5" fill="{sparse}"/>'
        f'<text x="{left + 180}" y="{y + 4}">sparse methods</text>'
        f'<circle cx="{left + 285}" cy="{y}" r="3" fill="{dense}"/>'
        f'<text x="{left + 293}" y="{y + 4}">dense methods</text>'
        f'<circle cx="{left + 390}" cy="{y}" r="2.5" fill="#555" opacity="0.35"/>'
        f'<text x="{left + 397}" y="{y + 4}">one seed</text></g>'
    ]


def _dense_caption(plotted: list[tuple[Row, str]]) -> str:
    """One caption line listing the dense methods with their Δm, best first."""
    dense = sorted((row for row, family in plotted if family == "dense"), key=lambda r: (-r.primary.mean, r.method))
    if not dense:
        return ""
    listed = ", ".join(f"{row.method} {signed(row.primary.mean, 2)}" for row in dense)
    return (
        f'<figcaption class="dense-methods">Dense methods (grey, group sparsity &lt; {DENSE_BELOW_PCT:g} %), '
        f"Δm {dense[0].primary_name} %: {html.escape(listed)}</figcaption>"
    )


def layer_svg(row: Row) -> str:
    """Small inline bar chart: zeroed channel groups per shared conv layer (mean over seeds)."""
    if not row.layers:
        return ""
    width, height, bar = max(160, 8 * len(row.layers) + 20), 90, 8
    bars = []
    for i, (name, value) in enumerate(row.layers):
        h = 0.7 * height * value / 100
        bars.append(
            f'<rect class="layer" x="{10 + i * bar}" y="{height - 15 - h:.1f}" width="{bar - 2}" '
            f'height="{h:.1f}" fill="#d62728"><title>{html.escape(name)}: {value:.1f} %</title></rect>'
        )
    return (
        f'<figure class="layers"><svg width="{width}" height="{height}" role="img" '
        f'aria-label="per-layer sparsity of {html.escape(row.method)}">'
        f'<line x1="8" y1="{height - 15}" x2="{width - 4}" y2="{height - 15}" stroke="#333"/>'
        + "".join(bars)
        + f"</svg><figcaption>{html.escape(row.method)}: {row.sparsity.text(1) or '—'} % of groups</figcaption>"
        "</figure>"
    )
