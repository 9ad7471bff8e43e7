"""Contact sheets: a few samples with every target, as one PNG (README picture, sanity checks).

Each target is drawn as its task kind says (`TaskKind.preview`): dense targets one column each, image-level
targets named beside their row when true (those that a registered task of the family reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtbench import catalog
from mtbench.data.reader import Reader
from mtbench.plots import save_figure
from mtbench.specs import TaskKind


def _label_colors(labels: np.ndarray, num_classes: int, ignore: float | None) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"].resampled(max(num_classes, 2))
    rgb = cmap(np.clip(labels, 0, None) % max(num_classes, 2))[..., :3]
    if ignore is not None:
        rgb[labels == ignore] = 0.0
    return rgb


def _invalid(value: np.ndarray, ignore: float | None) -> np.ndarray:
    """(H, W): pixels of a (C, H, W) map whose every channel holds the ignore value."""
    return (value == ignore).all(axis=0) if ignore is not None else np.zeros(value.shape[-2:], dtype=bool)


def _panel(kind: TaskKind, value: np.ndarray, classes: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """An RGB or single-channel image of one dense target, with imshow options, as its kind draws it."""
    if callable(kind.preview):
        return kind.preview(value, classes)
    if kind.preview == "labels":
        return _label_colors(value, classes or int(value.max()) + 1, kind.ignore), {}
    if kind.preview == "heat":
        return np.where(_invalid(value, kind.ignore), np.nan, value[0]), {"cmap": "magma_r"}
    if kind.preview == "vector":
        return np.moveaxis((value + 1.0) / 2.0, 0, -1).clip(0, 1), {}
    return value[0], {"cmap": "gray"}


def _classes(reader: Reader, target: str) -> int | None:
    """The number of classes of a label map: its declared value range's top + 1."""
    declared = reader.label_values.get(target)
    return declared[1] + 1 if declared else None


def contact_sheet(reader: Reader, out: Path, *, split: str | None = None, n: int = 4, title: str = "") -> Path:
    """Write ``n`` samples of ``split`` with all their targets to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = split or reader.splits()[0]
    kinds = {target: reader.kind_of(target) for target in reader.targets()}
    dense = [t for t, kind in kinds.items() if kind.preview != "flag"]
    tasked = {task.target for task in catalog.family_tasks(reader.family)}
    flags = [t for t, kind in kinds.items() if kind.preview == "flag"]
    columns = ["image", *dense]
    count = min(n, reader.num_samples(split))
    fig, axes = plt.subplots(count, len(columns), figsize=(2.2 * len(columns), 1.9 * count + 0.4), squeeze=False)
    for row in range(count):
        sample = reader.read(split, row, (*dense, *flags))
        for col, target in enumerate(columns):
            if target == "image":
                image, options = np.moveaxis(sample[target], 0, -1), {}
            else:
                image, options = _panel(kinds[target], sample[target], _classes(reader, target))
            axis = axes[row][col]
            axis.imshow(image, interpolation="nearest", **options)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(target, fontsize=9)
        if flags:
            shown = [t.split(":", 1)[-1] for t in flags if t in tasked and sample[t] > 0.5]
            axes[row][0].set_ylabel("\n".join(shown) or "(none)", fontsize=6, rotation=0, ha="right", va="center")
    identity = reader.identity(content=False)
    kind = "SYNTHETIC" if identity.synthetic else "real"
    fig.suptitle(title or f"{identity.dataset} ({kind}, {reader.layout}, split {split})", fontsize=10)
    return save_figure(fig, out, dpi=110)
