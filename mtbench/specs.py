"""Task and data-set specifications (the entries of the task-kind, task and data-set registries)."""

from __future__ import annotations

import functools
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mtbench.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

HeadKind = Literal["dense", "image"]
Loss = Callable[["Tensor", "Tensor"], "Tensor"]
#: how a contact sheet draws a target (`mtbench.data.contact`): class colours (ignore black), a colour map (ignore
#: blank), a unit vector per pixel as RGB, a gray map, or (image-level kinds) its name beside the row when true
PREVIEW_STYLES = ("labels", "heat", "vector", "gray", "flag")
#: a drawing of one target of its own: ``preview(value, classes) -> (image for imshow, imshow options)``
Preview = str | Callable[[Any, "int | None"], tuple[Any, dict[str, Any]]]

_resolve = functools.cache(pkgutil.resolve_name)


class Evaluator(Protocol):
    """What a task kind's evaluator is to the engine (`mtbench.metrics.Evaluator` implements it): accumulate
    batches, merge with another accumulator, compute the metrics once."""

    names: tuple[str, ...]

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def merge(self, other: Any) -> Any: ...

    def compute(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Deferred:
    """A function named ``"module:qualified.name"``, imported on its first call.

    The built-in task kinds name their losses and evaluators this way, so loading the catalog
    (``mtbench ls``, ``mtbench data``) does not import torch.
    """

    path: str

    @property
    def __name__(self) -> str:  # the named function's, as a plain function has it
        return self.path.replace(":", ".").rpartition(".")[2]

    def __call__(self, *args: Any) -> Any:
        return _resolve(self.path)(*args)


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
class TaskKind:
    """What every task of one kind shares: head shape, loss, evaluator, metrics, and what its targets are.

    A new kind is one `TaskKind` registered with `mtbench.catalog.register_kind`; a reader names the kind of each
    of its targets (`Reader.target_kinds`), and the data layer asks the kind, never the target's name, how the
    target is typed, cached and drawn.

    Attributes:
        name: registry name (``segmentation``, ``depth`` ...).
        head: ``dense`` (per-pixel output) or ``image`` (one output per image).
        loss: ``loss(pred, target) -> scalar``, named ``<loss name>_loss`` (see `mtbench.losses`).
        evaluator: ``evaluator(task) -> Evaluator``, a fresh metric accumulator (see `mtbench.metrics`).
        metrics: evaluation metrics with directions (names match what the evaluator returns).
        out_channels: head output channels, or None when each task sets them with ``TaskSpec.classes``.
        dtype: the numpy dtype of a target array as readers give it (``int64`` label maps, else ``float32``);
            a dense target is ``(C, H, W)`` (a label map ``(H, W)``), an image-level one a scalar.
        cache_dtype: the type an Arrow cache stores a non-integer target in, when a narrower one holds every value
            exactly (``uint8`` for 0/1 maps; every row is checked when the cache is written); None: ``dtype``.
            Integer label maps are stored in the narrowest type holding the reader's declared range.
        ignore: the value of a pixel without ground truth (in every channel): -1 for label maps, 0 for depth and
            normals; None where every value counts. Contact sheets leave such pixels blank.
        preview: how a contact sheet draws a target, one of `PREVIEW_STYLES` or a function (`Preview`).
        trivial: ``trivial(task, training targets) -> output`` of the trivial predictor that every result is read
            against (`mtbench.protocol.trivial_output`), or None for a kind that has none. Resizing needs no
            declaration: images are resized bilinearly and every target by nearest neighbour, keeping its values.
    """

    name: str
    head: HeadKind
    loss: Loss
    evaluator: Callable[[TaskSpec], Evaluator]
    metrics: tuple[MetricSpec, ...]
    out_channels: int | None = None
    dtype: str = "float32"
    cache_dtype: str | None = None
    ignore: float | None = None
    preview: Preview = "gray"
    trivial: Callable[[TaskSpec, Iterator[Tensor]], Tensor | None] | None = None

    def __post_init__(self) -> None:
        flag = self.preview == "flag"
        if not callable(self.preview) and (self.preview not in PREVIEW_STYLES or flag != (self.head == "image")):
            raise ConfigError(
                f"task kind {self.name!r}: preview {self.preview!r} does not fit a {self.head} head",
                expected="'flag' for an image-level kind; for a dense one 'labels', 'heat', 'vector', 'gray' or a "
                "function",
                found=repr(self.preview),
                fix="name a style that fits the head",
            )

    @property
    def loss_name(self) -> str:
        """The loss's short name (``cross_entropy`` for `cross_entropy_loss`)."""
        return self.loss.__name__.removesuffix("_loss")


@dataclass(frozen=True)
class TaskSpec:
    """A task: what it reads, what kind of task it is, how its results are versioned.

    Attributes:
        name: short name, unique within its family (``depth``, ``smiling``); used by ``--unseen``.
        family: the data family whose samples carry its target (``nyuv2``, ``celebamask``).
        title: human-readable name.
        target: the sample key it reads (``depth``, ``semantic13``, ``attr:Smiling``).
        kind: head, loss, evaluator and metrics, shared by every task of the kind.
        classes: head output channels where the kind leaves them to the task (segmentation classes).
        may_hold_out: whether ``--unseen`` may name it.
        version: bump when target, loss or metrics change; results record it.
        notes: anything a user comparing numbers must know.
    """

    name: str
    family: str
    title: str
    target: str
    kind: TaskKind
    classes: int | None = None
    may_hold_out: bool = True
    version: str = "1"
    notes: str = ""

    def __post_init__(self) -> None:
        if (self.classes is None) == (self.kind.out_channels is None):
            raise ConfigError(
                f"task {self.key!r}: head output channels given {'twice' if self.classes is not None else 'nowhere'}",
                expected=f"classes set exactly when kind {self.kind.name!r} leaves out_channels to the task",
                found=f"classes={self.classes!r}, kind out_channels={self.kind.out_channels!r}",
                fix="set classes only for kinds without a fixed out_channels",
            )

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"

    @property
    def head(self) -> HeadKind:
        return self.kind.head

    @property
    def out_channels(self) -> int:
        """Output channels of the task's head (the kind's fixed count or the task's classes)."""
        return self.kind.out_channels or self.classes  # type: ignore[return-value]  # __post_init__: one is set

    @property
    def loss(self) -> str:
        """The training loss's short name (``cross_entropy``, ``l1`` ...)."""
        return self.kind.loss_name

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        return self.kind.metrics

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
        layouts: the on-disk layouts it is documented in; the first is what ``data synth`` and runs write a
            synthetic set in. Reading uses every layout registered for the family (`mtbench.data.layouts`), so a
            new reader needs no entry here.
        train_split: split used for (meta-)training and fine-tuning.
        test_split: split used for evaluation (NYU-v2's literature evaluates on ``val``).
        default_tasks: tasks trained when the user names none (the papers' choice).
        generator: for synthetic sets, ``generator(out, n=..., seed=..., layout=..., **synth_options)``.
        synth_options: the generator's default size options.
        generator_version: the generator's output version (bumped whenever its output changes); part of the
            cached stand-in's folder name, so a cache written by another version is never read as this one's.
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
    generator_version: str = ""
    source: str = ""
    notes: str = field(default="", compare=False)
