"""Metric accumulators: one per task kind (`TaskKind.evaluator`), and `evaluator_for` which builds a task's.

An evaluator sees a whole split batch by batch and computes its metrics once at the end::

    evaluator = evaluator_for(task)
    for pred, target in batches:
        evaluator.update(pred, target)   # raw head output, canonical target
    scores = evaluator.compute()         # {metric name: float}, names as in task.metrics

`update` runs without gradients and accepts tensors on any device; the per-batch work is done
on that device (in float64 where precision matters) and only small sufficient statistics
(counts and sums, int64 / float64) are kept, on the CPU. Every metric is a statistic of the
whole split (pixel-weighted), never an average of per-batch values, so the result does not
depend on how the split is cut into batches. `compute` before any `update` returns NaN for
every metric.

Tensor conventions are those of `mtbench.losses`.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

from mtbench.errors import ConfigError
from mtbench.losses import IGNORE_INDEX, image_logits
from mtbench.specs import TaskSpec

NAN = float("nan")


def _check_same_shape(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ConfigError(
            f"{name} evaluator: prediction and target shapes differ",
            expected=f"target of shape {tuple(pred.shape)}",
            found=f"shape {tuple(target.shape)}",
        )


class Evaluator(ABC):
    """Accumulates sufficient statistics over a split; computes the metrics once.

    Attributes:
        names: the metric names `compute` returns, in order.
    """

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        configured = set(vars(self))
        self.reset()
        #: the sufficient statistics (what `reset` sets): summed or concatenated by `merge`
        self._state = tuple(sorted(set(vars(self)) - configured))

    def merge(self, other: Evaluator) -> Evaluator:
        """Add ``other``'s statistics (same kind and configuration) to this evaluator's: afterwards it holds what
        one evaluator updated with both evaluators' batches would (up to float summation order). Returns self."""
        for name in self._state:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, name, mine + theirs)
        return self

    @classmethod
    def for_task(cls, task: TaskSpec) -> Evaluator:
        """A fresh evaluator for ``task`` (a `TaskKind.evaluator` factory)."""
        return cls()

    @abstractmethod
    def reset(self) -> None:
        """Forget everything seen so far."""

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch (raw head output, canonical target)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything seen since the last `reset`."""

    def _nan(self) -> dict[str, float]:
        return dict.fromkeys(self.names, NAN)


class SegmentationEvaluator(Evaluator):
    """Semantic segmentation: mean IoU and pixel accuracy from a confusion matrix over the split.

    The confusion matrix ``M[g, p]`` counts labelled pixels of ground-truth class ``g`` predicted
    as ``p`` (label -1 is ignored). Then, per class ``c``, ``TP = M[c, c]``,
    ``FP = sum_g M[g, c] - TP``, ``FN = sum_p M[c, p] - TP``, and

    * ``mIoU`` = mean over the classes with ``TP + FP + FN > 0`` of ``TP / (TP + FP + FN)``
      (a class absent from both prediction and ground truth of the whole split is left out);
    * ``pixAcc`` = ``trace(M) / sum(M)``.

    Args:
        num_classes: number of classes ``C``; targets must lie in ``[0, C)`` or be -1.
    """

    names = ("mIoU", "pixAcc")

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ConfigError(
                "segmentation evaluator needs at least one class", expected=">= 1", found=str(num_classes)
            )
        self.num_classes = num_classes
        super().__init__()

    @classmethod
    def for_task(cls, task: TaskSpec) -> SegmentationEvaluator:
        """An evaluator over the task's ``out_channels`` classes."""
        return cls(task.out_channels)

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: logits (B, C, H, W), or already-decided labels (B, H, W) of an integer dtype.
            target: labels (B, H, W), -1 = ignore.
        """
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ConfigError(
                    "segmentation evaluator: wrong number of logit channels",
                    expected=f"{self.num_classes} channels",
                    found=f"shape {tuple(pred.shape)}",
                )
            labels = pred.argmax(dim=1)
        elif not pred.is_floating_point():
            labels = pred
        else:
            raise ConfigError(
                "segmentation evaluator: prediction must be logits or integer labels",
                expected="(B, C, H, W) logits or (B, H, W) integer labels",
                found=f"{pred.dtype} of shape {tuple(pred.shape)}",
            )
        _check_same_shape("segmentation", labels, target)
        target = target.to(labels.device, torch.int64)
        keep = target != IGNORE_INDEX
        gt, labels = target[keep], labels[keep].to(torch.int64)
        c = self.num_classes
        if gt.numel() and bool(((gt < 0) | (gt >= c)).any() | ((labels < 0) | (labels >= c)).any()):
            raise ConfigError(
                "segmentation evaluator: label outside the class range",
                expected=f"labels in [0, {c}) or {IGNORE_INDEX} (ignore)",
                found=f"target in [{int(gt.min())}, {int(gt.max())}], "
                f"prediction in [{int(labels.min())}, {int(labels.max())}]",
            )
        counts = torch.bincount(gt * c + labels, minlength=c * c)
        self.confusion += counts.reshape(c, c).cpu()

    def compute(self) -> dict[str, float]:
        m = self.confusion.to(torch.float64)
        total = m.sum()
        if total == 0:
            return self._nan()
        tp = m.diagonal()
        union = m.sum(dim=0) + m.sum(dim=1) - tp
        present = union > 0
        return {"mIoU": float((tp[present] / union[present]).mean()), "pixAcc": float(tp.sum() / total)}


class DepthEvaluator(Evaluator):
    """Depth: errors over every valid pixel of the split (valid = target > 0), pixel-weighted.

    * ``absErr`` = ``sum |p - g| / N``;
    * ``relErr`` = ``sum (|p - g| / g) / N``;

    where the sums run over the ``N`` valid pixels of the whole split (not a mean of per-batch
    or per-image means).
    """

    names = ("absErr", "relErr")

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: (B, 1, H, W).
            target: (B, 1, H, W), 0 = invalid.
        """
        _check_same_shape("depth", pred, target)
        g = target.to(pred.device, torch.float64)
        valid = g > 0
        g = g[valid]
        err = (pred.to(torch.float64)[valid] - g).abs()
        self.abs_sum += float(err.sum())
        self.rel_sum += float((err / g).sum())
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            return self._nan()
        return {"absErr": self.abs_sum / self.count, "relErr": self.rel_sum / self.count}


class NormalsEvaluator(Evaluator):
    """Surface normals: angular error over every valid pixel of the split.

    Per valid pixel (target not all-zero), in float64,
    ``angle = degrees(acos(clamp(<p / |p|, g>, -1, 1)))`` with ``g`` the unit target as given.

    * ``mean``: mean angle;
    * ``median``: median angle, read from a histogram of 0.01° bins over [0°, 180°] (the two
      middle order statistics are located by cumulative counts and replaced by their bins'
      centres, then averaged as numpy does), so it is exact within 0.01° (in fact 0.005°)
      while keeping memory constant over the split;
    * ``within11.25``, ``within22.5``, ``within30``: fraction in [0, 1] (not percent) of valid
      pixels with ``angle < threshold``, from exact counts.
    """

    names = ("mean", "median", "within11.25", "within22.5", "within30")
    BIN_DEG = 0.01
    NUM_BINS = 18000  # 180° / 0.01°
    THRESHOLDS = (11.25, 22.5, 30.0)
    EPS = 1e-12

    def reset(self) -> None:
        self.histogram = torch.zeros(self.NUM_BINS, dtype=torch.int64)
        self.angle_sum = 0.0
        self.count = 0
        self.within = torch.zeros(len(self.THRESHOLDS), dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: (B, 3, H, W), unnormalised.
            target: (B, 3, H, W), unit vectors, all-zero = invalid.
        """
        _check_same_shape("normals", pred, target)
        g = target.to(pred.device, torch.float64).movedim(1, -1)
        valid = (g != 0).any(dim=-1)
        g = g[valid]
        p = pred.to(torch.float64).movedim(1, -1)[valid]
        p = p / p.norm(dim=-1, keepdim=True).clamp_min(self.EPS)
        angle = torch.rad2deg(torch.acos((p * g).sum(dim=-1).clamp(-1.0, 1.0)))
        bins = (angle / self.BIN_DEG).floor().long().clamp(0, self.NUM_BINS - 1)
        self.histogram += torch.bincount(bins, minlength=self.NUM_BINS).cpu()
        self.angle_sum += float(angle.sum())
        self.count += int(angle.numel())
        thresholds = torch.tensor(self.THRESHOLDS, dtype=torch.float64, device=angle.device)
        self.within += (angle.unsqueeze(0) < thresholds.unsqueeze(1)).sum(dim=1).cpu()

    def _order_statistic(self, cumulative: Tensor, k: int) -> float:
        """Centre of the bin holding the k-th smallest angle (0-based)."""
        index = int(torch.searchsorted(cumulative, torch.tensor([k + 1]), right=False)[0])
        return (index + 0.5) * self.BIN_DEG

    def compute(self) -> dict[str, float]:
        n = self.count
        if n == 0:
            return self._nan()
        cumulative = torch.cumsum(self.histogram, dim=0)
        median = 0.5 * (self._order_statistic(cumulative, (n - 1) // 2) + self._order_statistic(cumulative, n // 2))
        result = {"mean": self.angle_sum / n, "median": median}
        for name, count in zip(self.names[2:], self.within.tolist()):
            result[name] = count / n
        return result


def _bit_counts(words: Tensor, bits: int) -> Tensor:
    """How many of ``words`` (int64, non-negative) have each of the low ``bits`` bits set: (bits,) int64.

    Eight passes, one per byte: a histogram of the byte's 256 values, times the bits of each value (exact integers).
    """
    values = torch.arange(256, device=words.device)
    bits_of_value = (values[:, None] >> torch.arange(8, device=words.device)) & 1  # (256, 8)
    counts = []
    for byte in range((bits + 7) // 8):
        histogram = torch.bincount(((words >> (8 * byte)) & 255).flatten(), minlength=256)
        counts.append((histogram[:, None] * bits_of_value).sum(dim=0))
    return torch.cat(counts)[:bits]


class EdgeEvaluator(Evaluator):
    """Edges: an ODS-style F-measure with a small pixel tolerance and one-to-one matching.

    This approximates the MATLAB BSDS benchmark (``correspondPixels``) and is not the same number:
    BSDS thins the prediction and finds an optimal one-to-one assignment between predicted and
    ground-truth edge pixels; we do not thin, and we match greedily by increasing distance.

    For each threshold ``t`` in 0.01, 0.02, ..., 0.99, a pixel is a predicted edge when
    ``sigmoid(pred) >= t``; a ground-truth edge is ``target > 0.5``. Matching: for every offset
    ``(dy, dx)`` with ``max(|dy|, |dx|) <= r``, in order of increasing Euclidean distance, every
    still-unmatched predicted pixel at ``(y, x)`` is matched to the ground-truth pixel at
    ``(y + dy, x + dx)`` if that one is still unmatched. Each pixel is matched at most once, so a
    thick or noisy prediction does not get credit for pixels the ground truth has only once. Over
    the whole split: ``P = matched / predicted``, ``R = matched / ground-truth``, ``F = 2PR/(P+R)``
    (0 where undefined), ``odsF = max_t F(t)`` (one threshold for the whole split).

    Args:
        tolerance_px: tolerance radius ``r`` in pixels (0 = exact position). None (default):
            ``max(1, round(0.0075 * sqrt(H^2 + W^2)))``, the BSDS ``maxDist`` convention,
            from each batch's image size (1 px at 96×128, 4 px at 288×384).
    """

    names = ("odsF",)
    NUM_THRESHOLDS = 99
    MAX_DIST = 0.0075
    #: Thresholds matched at once: bit t of one int64 word per pixel says "predicted at threshold t", so one
    #: pass of the greedy matching serves them all (the sign bit is left alone).
    WORD_BITS = 63

    def __init__(self, tolerance_px: int | None = None) -> None:
        if tolerance_px is not None and tolerance_px < 0:
            raise ConfigError(
                "edge evaluator: negative tolerance", expected="tolerance_px >= 0 or None", found=str(tolerance_px)
            )
        self.tolerance_px = tolerance_px
        super().__init__()

    @classmethod
    def default_tolerance(cls, height: int, width: int) -> int:
        """``max(1, round(0.0075 * diagonal))`` pixels, halves rounded up."""
        return max(1, math.floor(cls.MAX_DIST * math.hypot(height, width) + 0.5))

    @classmethod
    def thresholds(cls) -> Tensor:
        """The thresholds 0.01 ... 0.99 (float64)."""
        return torch.arange(1, cls.NUM_THRESHOLDS + 1, dtype=torch.float64) / 100

    @staticmethod
    def offsets(radius: int) -> list[tuple[int, int]]:
        """Offsets within the square of ``radius``, nearest first (ties in a fixed order)."""
        square = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
        return sorted(square, key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))

    def reset(self) -> None:
        k = self.NUM_THRESHOLDS
        self.pred_count = torch.zeros(k, dtype=torch.int64)
        self.matched_pred = torch.zeros(k, dtype=torch.int64)
        self.matched_gt = torch.zeros(k, dtype=torch.int64)
        self.gt_count = 0
        self.pixels = 0

    @staticmethod
    def _overlap(height: int, width: int, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """The pixels (y, x) whose neighbour (y + dy, x + dx) lies inside the image, and those neighbours."""
        ys, yd = (slice(dy, height), slice(0, height - dy)) if dy >= 0 else (slice(0, height + dy), slice(-dy, height))
        xs, xd = (slice(dx, width), slice(0, width - dx)) if dx >= 0 else (slice(0, width + dx), slice(-dx, width))
        return (yd, xd), (ys, xs)

    def _counts(self, prob: Tensor, gt: Tensor, thresholds: Tensor, radius: int) -> tuple[Tensor, Tensor]:
        """Predicted and greedily matched pixels at each of ``thresholds`` (at most `WORD_BITS`).

        Args:
            prob: (B, H, W) edge probabilities.
            gt: (B, H, W) ground-truth edges (bool).
            thresholds: (T,) in ``prob``'s dtype.
            radius: tolerance in pixels.

        Returns:
            (T,) predicted counts and (T,) matched counts (int64, on ``prob``'s device).

        For each offset, nearest first, a free predicted pixel at (y, x) takes the free ground-truth pixel at
        (y + dy, x + dx), and both stop being free. The thresholds are the bits of one word per pixel, so the
        matching is bitwise on the overlap of the image with its shifted copy, done in place.
        """
        count = len(thresholds)
        predicted = torch.zeros(prob.shape, dtype=torch.int64, device=prob.device)
        for bit in range(count):
            predicted |= (prob >= thresholds[bit]).to(torch.int64) << bit
        free_pred = predicted.clone()
        free_gt = torch.where(gt, (1 << count) - 1, 0)
        height, width = prob.shape[-2:]
        for dy, dx in self.offsets(radius):
            (py, px), (gy, gx) = self._overlap(height, width, dy, dx)
            pred_view, gt_view = free_pred[..., py, px], free_gt[..., gy, gx]
            match = pred_view & gt_view
            pred_view ^= match
            gt_view ^= match
        taken = predicted ^ free_pred
        return _bit_counts(predicted, count), _bit_counts(taken, count)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: logits (B, 1, H, W).
            target: (B, 1, H, W) in {0, 1}.
        """
        _check_same_shape("edge", pred, target)
        if pred.dim() != 4 or pred.shape[1] != 1:
            raise ConfigError(
                "edge evaluator: prediction must be one logit map per image",
                expected="(B, 1, H, W)",
                found=f"shape {tuple(pred.shape)}",
            )
        height, width = pred.shape[-2:]
        r = self.default_tolerance(height, width) if self.tolerance_px is None else self.tolerance_px
        prob = torch.sigmoid(pred.float())[:, 0]
        gt = (target.to(pred.device) > 0.5)[:, 0]
        thresholds = self.thresholds().to(prob.device, prob.dtype)
        for first in range(0, self.NUM_THRESHOLDS, self.WORD_BITS):
            chunk = thresholds[first : first + self.WORD_BITS]
            predicted, matched = (counts.cpu() for counts in self._counts(prob, gt, chunk, r))
            self.pred_count[first : first + len(chunk)] += predicted
            self.matched_pred[first : first + len(chunk)] += matched
            self.matched_gt[first : first + len(chunk)] += matched
        self.gt_count += int(gt.sum())
        self.pixels += gt.numel()

    def f_measures(self) -> Tensor:
        """F(t) for every threshold (float64; 0 where undefined)."""
        pred_count = self.pred_count.to(torch.float64)
        matched_pred = self.matched_pred.to(torch.float64)
        matched_gt = self.matched_gt.to(torch.float64)
        precision = torch.where(pred_count > 0, matched_pred / pred_count.clamp_min(1), 0.0)
        recall = matched_gt / self.gt_count if self.gt_count > 0 else torch.zeros_like(matched_gt)
        defined = (pred_count > 0) & (self.gt_count > 0) & (precision + recall > 0)
        f = 2 * precision * recall / (precision + recall).clamp_min(1e-300)
        return torch.where(defined, f, 0.0)

    def compute(self) -> dict[str, float]:
        if self.pixels == 0:
            return self._nan()
        return {"odsF": float(self.f_measures().max())}


class BinaryEvaluator(Evaluator):
    """Image-level binary attributes, at decision threshold 0.5 (``sigmoid(pred) >= 0.5``).

    Probabilities and labels (target > 0.5) are collected over the split, then scored with
    scikit-learn: ``acc`` = ``accuracy_score``, ``f1`` = ``f1_score`` of the positive class
    (``zero_division=0``), ``balancedAcc`` = ``balanced_accuracy_score`` (mean recall of the two
    classes; with a single class present in the ground truth it is that class's recall and
    scikit-learn's warning about it is silenced).
    """

    names = ("acc", "f1", "balancedAcc")
    THRESHOLD = 0.5

    def reset(self) -> None:
        self.probs: list[Tensor] = []
        self.labels: list[Tensor] = []

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: logits (B, 1) or (B,).
            target: (B,) in {0, 1}.
        """
        pred = image_logits("binary evaluator", pred)
        _check_same_shape("binary", pred, target.reshape(-1))
        self.probs.append(torch.sigmoid(pred.to(torch.float64)).cpu())
        self.labels.append((target.reshape(-1) > 0.5).to(torch.int64).cpu())

    def compute(self) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

        if not self.probs or sum(p.numel() for p in self.probs) == 0:
            return self._nan()
        y_true = torch.cat(self.labels).numpy()
        y_pred = (torch.cat(self.probs).numpy() >= self.THRESHOLD).astype(np.int64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            balanced = balanced_accuracy_score(y_true, y_pred)
        return {
            "acc": float(accuracy_score(y_true, y_pred)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
            "balancedAcc": float(balanced),
        }


def evaluator_for(task: TaskSpec) -> Evaluator:
    """A fresh evaluator for ``task`` (built by its kind)."""
    return task.kind.evaluator(task)


__all__ = [
    "BinaryEvaluator",
    "DepthEvaluator",
    "EdgeEvaluator",
    "Evaluator",
    "NormalsEvaluator",
    "SegmentationEvaluator",
    "evaluator_for",
]
