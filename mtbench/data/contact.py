"""Contact sheets: a few samples with every target, as one PNG (README picture, sanity checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtbench.data.reader import Reader
from mtbench.plots import save_figure


def _label_colors(labels: np.ndarray, num_classes: int) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"].resampled(max(num_classes, 2))
    rgb = cmap(np.clip(labels, 0, None) % max(num_classes, 2))[..., :3]
    rgb[labels < 0] = 0.0
    return rgb


def _panel(target: str, value: np.ndarray) -> tuple[np.ndarray, dict]:
    """An RGB or single-channel image for one target, with imshow options."""
    if target == "image":
        return np.moveaxis(value, 0, -1), {}
    if target.startswith("semantic") or target.startswith("faceseg"):
        classes = {"semantic13": 13, "semantic40": 40, "faceseg19": 19, "faceseg3": 3}[target]
        return _label_colors(value, classes), {}
    if target == "depth":
        depth = value[0]
        return np.where(depth > 0, depth, np.nan), {"cmap": "magma_r"}
    if target == "normal":
        return np.moveaxis((value + 1.0) / 2.0, 0, -1).clip(0, 1), {}
    return value[0], {"cmap": "gray"}


def contact_sheet(reader: Reader, out: Path, *, split: str | None = None, n: int = 4, title: str = "") -> Path:
    """Write ``n`` samples of ``split`` with all their targets to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = split or reader.splits()[0]
    dense = [t for t in reader.targets() if not t.startswith("attr:")]
    attributes = [t for t in reader.targets() if t.startswith("attr:")]
    columns = ["image", *dense]
    count = min(n, reader.num_samples(split))
    fig, axes = plt.subplots(count, len(columns), figsize=(2.2 * len(columns), 1.9 * count + 0.4), squeeze=False)
    for row in range(count):
        sample = reader.read(split, row, (*dense, *attributes))
        for col, target in enumerate(columns):
            image, options = _panel(target, sample[target])
            axis = axes[row][col]
            axis.imshow(image, interpolation="nearest", **options)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(target, fontsize=9)
        if attributes:
            on = [t.split(":", 1)[1] for t in attributes if sample[t] > 0.5]
            shown = [
                a
                for a in on
                if a
                in (
                    "Male",
                    "Smiling",
                    "Eyeglasses",
                    "Wearing_Hat",
                    "Arched_Eyebrows",
                    "Mouth_Slightly_Open",
                    "Young",
                    "Bald",
                )
            ]
            axes[row][0].set_ylabel("\n".join(shown) or "(none)", fontsize=6, rotation=0, ha="right", va="center")
    identity = reader.identity(content=False)
    kind = "SYNTHETIC" if identity.synthetic else "real"
    fig.suptitle(title or f"{identity.dataset} ({kind}, {reader.layout}, split {split})", fontsize=10)
    return save_figure(fig, out, dpi=110)
