"""Training losses, one per task kind (`TaskKind.loss`), and `task_loss` which applies a task's.

Every loss takes a raw head output and a canonical target (see the tensor conventions below),
returns a scalar, and is built from ordinary differentiable torch operations, so it can be
differentiated twice (MAML inner loops use ``create_graph=True``). A loss whose batch holds no
usable pixel returns zero, still connected to the graph (like ``pred.sum() * 0``). Masked
losses are written as ``sum(loss * mask) / max(count, 1)``, so they never wait on the device
to ask whether a batch has valid pixels.

Tensor conventions (batched):

* ``cross_entropy`` (segmentation): pred logits (B, C, H, W); target int64 (B, H, W), -1 = ignore.
* ``l1`` (depth): pred (B, 1, H, W); target (B, 1, H, W), 0 = invalid (valid = target > 0).
* ``cosine`` (normals): pred (B, 3, H, W) unnormalised; target (B, 3, H, W) unit vectors,
  all-zero = invalid.
* ``weighted_bce`` (edges): pred logits (B, 1, H, W); target (B, 1, H, W) in {0, 1}.
* ``bce`` (image-level attributes): pred logits (B, 1) or (B,); target (B,) in {0, 1}.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtbench.errors import ConfigError
from mtbench.specs import TaskSpec

#: label of pixels that segmentation losses and metrics ignore
IGNORE_INDEX = -1
#: weight of positive (edge) pixels in `weighted_bce`; negatives get ``1 - EDGE_POS_WEIGHT``
EDGE_POS_WEIGHT = 0.95
#: added (squared) under the square root when normalising predicted normals
NORMAL_EPS = 1e-6


def _check_shape(name: str, pred: Tensor, target: Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise `ConfigError` unless ``target`` has the shape ``expected`` (None = pred's size there)."""
    want = tuple(pred.shape[i] if size is None else size for i, size in enumerate(expected))
    if tuple(target.shape) != want:
        raise ConfigError(
            f"{name} loss: target shape does not match the prediction",
            expected=f"target of shape {want} for pred of shape {tuple(pred.shape)}",
            found=f"target of shape {tuple(target.shape)}",
            fix="check the head's out_channels and the target's canonical layout",
        )


def image_logits(user: str, pred: Tensor) -> Tensor:
    """``pred`` as (B,) logits; a `ConfigError` naming ``user`` unless it holds one logit per image."""
    if pred.numel() != pred.shape[0]:
        raise ConfigError(
            f"{user}: prediction must have one logit per image",
            expected="pred of shape (B,) or (B, 1)",
            found=f"shape {tuple(pred.shape)}",
        )
    return pred.reshape(-1)


def cross_entropy_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels (label -1 ignored), averaged over them.

    Args:
        pred: logits (B, C, H, W).
        target: class indices (B, H, W), -1 = ignore.

    Returns:
        Scalar loss; a graph-connected zero when no pixel is labelled.
    """
    if pred.dim() != 4:
        raise ConfigError(
            "cross_entropy loss: prediction must be per-pixel logits",
            expected="pred of shape (B, C, H, W)",
            found=f"shape {tuple(pred.shape)}",
        )
    _check_shape("cross_entropy", pred, target, (pred.shape[0], pred.shape[2], pred.shape[3]))
    target = target.long()
    count = (target != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="sum") / count


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over valid pixels (target > 0).

    Args:
        pred: (B, 1, H, W).
        target: (B, 1, H, W), 0 = invalid.

    Returns:
        Scalar loss; a graph-connected zero when no pixel is valid.
    """
    _check_shape("l1", pred, target, (None,) * pred.dim())
    valid = (target > 0).to(pred.dtype)
    error = (pred - target.to(pred.dtype)).abs() * valid
    return error.sum() / valid.sum().clamp_min(1)


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - cos(pred, target)`` averaged over valid pixels (target not all-zero).

    The prediction is normalised as ``p / sqrt(|p|^2 + eps^2)`` (eps = `NORMAL_EPS`), which is
    smooth everywhere, so first and second derivatives stay finite even at ``p = 0``. The
    target is used as given (unit vectors by convention).

    Args:
        pred: (B, 3, H, W), unnormalised.
        target: (B, 3, H, W), unit vectors, all-zero = invalid.

    Returns:
        Scalar loss; a graph-connected zero when no pixel is valid.
    """
    _check_shape("cosine", pred, target, (None,) * pred.dim())
    target = target.to(pred.dtype)
    valid = (target != 0).any(dim=1).to(pred.dtype)  # (B, H, W)
    p = pred / (pred.pow(2).sum(dim=1, keepdim=True) + NORMAL_EPS**2).sqrt()
    error = (1 - (p * target).sum(dim=1)) * valid
    return error.sum() / valid.sum().clamp_min(1)


def weighted_bce_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy for edges (Vandenhende et al., MTI-Net / ATRC).

    ``-[w * y * log(sigmoid(x)) + (1 - w) * (1 - y) * log(1 - sigmoid(x))]`` with
    ``w = EDGE_POS_WEIGHT = 0.95``, averaged over all pixels.

    Args:
        pred: logits (B, 1, H, W).
        target: (B, 1, H, W) in {0, 1}.

    Returns:
        Scalar loss.
    """
    _check_shape("weighted_bce", pred, target, (None,) * pred.dim())
    target = target.to(pred.dtype)
    weight = EDGE_POS_WEIGHT * target + (1 - EDGE_POS_WEIGHT) * (1 - target)
    return F.binary_cross_entropy_with_logits(pred, target, weight=weight, reduction="mean")


def bce_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy with logits for image-level attributes, averaged over images.

    Args:
        pred: logits (B, 1) or (B,).
        target: (B,) in {0, 1}.

    Returns:
        Scalar loss.
    """
    pred = image_logits("bce loss", pred)
    _check_shape("bce", pred, target, (None,))
    return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), reduction="mean")


def task_loss(task: TaskSpec, pred: Tensor, target: Tensor) -> Tensor:
    """The training loss of ``task`` (its kind's loss) on one batch.

    Args:
        task: the task.
        pred: raw head output (see the module docstring for shapes).
        target: canonical target of the same batch.

    Returns:
        Scalar, twice-differentiable loss.

    Raises:
        ConfigError: the shapes do not match.
    """
    return task.kind.loss(pred, target)


__all__ = [
    "EDGE_POS_WEIGHT",
    "IGNORE_INDEX",
    "NORMAL_EPS",
    "bce_loss",
    "cosine_loss",
    "cross_entropy_loss",
    "image_logits",
    "l1_loss",
    "task_loss",
    "weighted_bce_loss",
]
