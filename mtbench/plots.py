"""Pictures a person would rather look at than read: per-layer sparsity of the shared backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sparsity_chart(sparsity: dict[str, Any], out: Path, title: str = "") -> Path:
    """Bar chart of the zeroed channel groups per shared conv layer (from `SparsityStats.to_dict`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sparsity["layers"]
    names = [layer["name"] for layer in layers]
    fractions = [100.0 * layer["zero_groups"] / layer["groups"] if layer["groups"] else 0.0 for layer in layers]
    fig, axis = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 3.6))
    axis.bar(range(len(names)), fractions, color="#1f77b4")
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    axis.set_ylim(0, 100)
    axis.set_ylabel("zeroed channel groups (%)")
    axis.set_title(
        title
        or (
            f"group sparsity {100 * sparsity['group_sparsity']:.1f} %, "
            f"parameter sparsity {100 * sparsity['param_sparsity']:.1f} % of the shared convs"
        ),
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
