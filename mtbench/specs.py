"""Task and data-set specifications (the entries of the task and data-set registries)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

HeadKind = Literal["dense", "image"]
LossName = Literal["cross_entropy", "l1", "cosine", "weighted_bce", "bce"]
EvaluatorName = Literal["segmentation", "depth", "normals", "edges", "binary"]


@dataclass(frozen=True)
class MetricSpec:
    """One evaluation metric of a task.

    Attributes:
        name: key in result files, e.g. ``"mIoU"``.
        higher_is_better: direction, used by Δm and ranking.
        description: what it measures, for tables and ``--help``.
        in_delta_m: whether Δm uses it. False for a metric whose reference can legitimately be 0
            (Δm divides by the reference), e.g. F1 of a classifier that predicts one class.
    """

    name: str
    higher_is_better: bool
    description: str = ""
    in_delta_m: bool = True

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class TaskSpec:
    """A task: what it reads, what head it needs, how it is trained and scored.

    Attributes:
        name: short name, unique within its family (``depth``, ``smiling``); used by ``--unseen``.
        family: the data family whose samples carry its target (``nyuv2``, ``celebamask``).
        title: human-readable name.
        target: the sample key it reads (``depth``, ``semantic13``, ``attr:Smiling``).
        head: ``dense`` (per-pixel output) or ``image`` (one output per image).
        out_channels: output channels of the head (classes, 1, 3 ...).
        loss: training loss name, implemented once in `mtbench.losses`.
        evaluator: metric accumulator, implemented once in `mtbench.metrics`.
        metrics: evaluation metrics with directions (names match what the evaluator returns).
        may_hold_out: whether ``--unseen`` may name it.
        version: bump when target, loss or metrics change; results record it.
        notes: anything a user comparing numbers must know.
    """

    name: str
    family: str
    title: str
    target: str
    head: HeadKind
    out_channels: int
    loss: LossName
    evaluator: EvaluatorName
    metrics: tuple[MetricSpec, ...]
    may_hold_out: bool = True
    version: str = "1"
    notes: str = ""

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"

    @property
    def directions(self) -> dict[str, bool]:
        """Metric name -> higher is better."""
        return {m.name: m.higher_is_better for m in self.metrics}


Generator = Callable[..., Path]


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: its task family, on-disk layouts and splits.

    Attributes:
        name: registry name (``nyuv2``, ``nyuv2-synth``).
        family: task family its samples serve.
        title: human-readable name.
        synthetic: True for procedurally generated stand-ins; results keep them apart from real data.
        layouts: names of the on-disk layouts its readers understand (first = written by ``synth``).
        train_split: split used for (meta-)training and fine-tuning.
        test_split: split used for evaluation (NYU-v2's literature evaluates on ``val``).
        default_tasks: tasks trained when the user names none (the papers' choice).
        generator: for synthetic sets, ``generator(out, n=..., seed=..., layout=..., **synth_options)``.
        synth_options: the generator's default size options.
        source: where the real data comes from, for ``ls datasets`` and error messages.
    """

    name: str
    family: str
    title: str
    synthetic: bool
    layouts: tuple[str, ...]
    train_split: str = "train"
    test_split: str = "val"
    default_tasks: tuple[str, ...] = ()
    generator: Generator | None = None
    synth_options: dict[str, int] = field(default_factory=dict, compare=False)
    source: str = ""
    notes: str = field(default="", compare=False)
