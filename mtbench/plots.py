"""Pictures a person would rather look at than read: per-layer sparsity of the shared backbone."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtbench.result import HistoryRow


def save_figure(fig: Any, out: Path, dpi: int = 100) -> Path:
    """Lay out, write as PNG (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def sparsity_chart(sparsity: dict[str, Any], out: Path, title: str = "") -> Path:
    """Bar chart of the zeroed channel groups per shared conv layer (from `SparsityStats.to_dict`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sparsity["layers"]
    names = [layer["name"] for layer in layers]
    fractions = [100.0 * layer["zero_groups"] / layer["groups"] if layer["groups"] else 0.0 for layer in layers]
    width = max(6.0, 0.32 * len(names) + 2)
    fig, axis = plt.subplots(figsize=(width, 3.6))
    axis.bar(range(len(names)), fractions, color="#1f77b4")
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    axis.set_ylim(0, 100)
    axis.set_ylabel("zeroed channel groups (%)")
    text = title or (
        f"group sparsity {100 * sparsity['group_sparsity']:.1f} %, "
        f"parameter sparsity {100 * sparsity['param_sparsity']:.1f} % of the shared convs"
    )
    axis.set_title(textwrap.fill(text, width=int(13 * width)), fontsize=9)  # ~13 characters per inch at 9 pt
    return save_figure(fig, out)


def lambda_chart(history: Sequence[HistoryRow], out: Path, title: str = "") -> Path | None:
    """λ's trajectory beside its meta-gradient ∂L_Q/∂λ and the group sparsity, over training steps.

    Returns None (and draws nothing) for a run without a learned λ (no ``lambda_grad`` in its history).
    """
    logged = [h for h in history if h.lambda_grad is not None and h.lam is not None]
    if not logged:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps = [h.step for h in logged]
    lam = [h.mean_lam for h in logged]
    grads = [h.lambda_grad for h in logged]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(7.0, 6.4), sharex=True)
    top.plot(steps, lam, color="#1f77b4")
    top.set_yscale("log")
    top.set_ylabel("λ (log scale)")
    middle.bar(steps, grads, width=max(1.0, 0.8 * (steps[1] - steps[0])) if len(steps) > 1 else 1.0,
               color=["#d62728" if g > 0 else "#2ca02c" for g in grads])
    middle.axhline(0, color="#333", linewidth=0.8)
    magnitudes = sorted(abs(g) for g in grads if g) or [1e-6]
    linthresh = magnitudes[len(magnitudes) // 2] / 10  # below a tenth of the median size: linear
    middle.set_yscale("symlog", linthresh=linthresh)
    top_decade = math.ceil(math.log10(magnitudes[-1]))
    decades = [10.0**k for k in range(top_decade - 2, top_decade + 1) if 10.0**k > linthresh]
    middle.set_yticks([-d for d in reversed(decades)] + [0.0] + decades)
    middle.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    middle.set_ylabel("∂L_Q/∂λ\n(red: pushes λ down)")
    bottom.plot(steps, [100 * (h.group_sparsity or 0.0) for h in logged], color="#9467bd")
    bottom.set_ylabel("zeroed groups (%)")
    bottom.set_xlabel("meta-iteration")
    positive = logged[-1].lambda_grad_positive
    fig.suptitle(
        (title + "\n" if title else "")
        + (f"∂L_Q/∂λ > 0 on {100 * positive:.0f} % of all steps" if positive is not None else ""),
        fontsize=9,
    )
    return save_figure(fig, out)
