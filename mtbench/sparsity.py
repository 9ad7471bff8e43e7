"""Structured (channel-group) sparsity of the shared backbone: groups, penalty, prox step, statistics.

Only the convolution kernels of the shared backbone are sparsified (not heads, norms or biases).
A kernel ``W`` of shape ``C_out × C_in × k × k`` has one group per input channel ``c`` (the axis of
the authors' code): ``W_g = W[:, c]`` of size ``n_g = C_out·k²``; ``axis="out"`` groups by output
channel instead. The penalty is ``Ω = Σ_layers Σ_g √n_g ‖W_g‖₂`` and the proximal step after an
optimizer step with learning rate ``η`` is block soft-thresholding:
``W_g ← max(0, 1 − η·λ·√n_g / ‖W_g‖₂) · W_g``. This is plain block soft-thresholding after the step;
the authors' optimizer additionally preconditions by Adam's denominator (not done here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

Axis = Literal["in", "out"]


def shared_conv_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every conv kernel of ``model.backbone`` (the shared, sparsified part)."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    return [
        (name, module.weight)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Conv2d) and module.weight.dim() == 4
    ]


def _reduce_dims(axis: Axis) -> tuple[int, ...]:
    return (0, 2, 3) if axis == "in" else (1, 2, 3)


def group_size(weight: Tensor, axis: Axis = "in") -> int:
    """``n_g``: elements per group."""
    out_channels, in_channels, kh, kw = weight.shape
    return (out_channels if axis == "in" else in_channels) * kh * kw


def group_norms(weight: Tensor, axis: Axis = "in") -> Tensor:
    """‖W_g‖₂ for every group (length C_in for ``axis="in"``)."""
    return weight.pow(2).sum(dim=_reduce_dims(axis)).sqrt()


def group_lasso(weights: Sequence[Tensor], axis: Axis = "in", eps: float = 0.0) -> Tensor:
    """Ω = Σ_layers Σ_g √n_g ‖W_g‖₂ (differentiable; ``eps`` smooths the norm at zero if > 0)."""
    total = weights[0].new_zeros(())
    for weight in weights:
        squared = weight.pow(2).sum(dim=_reduce_dims(axis))
        norms = (squared + eps).sqrt() if eps else squared.sqrt()
        total = total + group_size(weight, axis) ** 0.5 * norms.sum()
    return total


def group_lasso_grad(weights: Sequence[Tensor], axis: Axis = "in") -> list[Tensor]:
    """∇Ω, in closed form: √n_g · W_g / ‖W_g‖₂ (0 for a zero group, the minimum-norm subgradient)."""
    grads = []
    for weight in weights:
        norms = group_norms(weight, axis)
        scale = torch.where(
            norms > 0, group_size(weight, axis) ** 0.5 / norms.clamp_min(1e-30), torch.zeros_like(norms)
        )
        shape = (1, -1, 1, 1) if axis == "in" else (-1, 1, 1, 1)
        grads.append(weight * scale.view(shape))
    return grads


@torch.no_grad()
def prox_group_lasso_(
    weights: Sequence[Tensor], threshold: float | Tensor | Sequence[float | Tensor], axis: Axis = "in"
) -> None:
    """In place: ``W_g ← max(0, 1 − threshold·√n_g/‖W_g‖₂) · W_g`` (threshold = η·λ; one per layer allowed)."""
    thresholds = threshold if isinstance(threshold, (list, tuple)) else [threshold] * len(weights)
    shape = {"in": (1, -1, 1, 1), "out": (-1, 1, 1, 1)}[axis]
    for weight, tau in zip(weights, thresholds):
        norms = group_norms(weight, axis)
        tau = torch.as_tensor(tau, dtype=weight.dtype, device=weight.device)
        scale = (1.0 - tau * group_size(weight, axis) ** 0.5 / norms.clamp_min(1e-30)).clamp_min(0.0)
        weight.mul_(scale.view(shape))


def zero_group_masks(weights: Sequence[Tensor], axis: Axis = "in") -> list[Tensor]:
    """Boolean masks (broadcastable to each weight) that are False on exactly-zero groups."""
    shape = {"in": (1, -1, 1, 1), "out": (-1, 1, 1, 1)}[axis]
    return [(group_norms(w, axis) > 0).view(shape) for w in weights]


@dataclass
class LayerSparsity:
    name: str
    groups: int
    zero_groups: int
    params: int
    zero_params: int


@dataclass
class SparsityStats:
    """Group and parameter sparsity of the shared conv kernels, per layer and in total."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def group_sparsity(self) -> float:
        groups = sum(layer.groups for layer in self.layers)
        return sum(layer.zero_groups for layer in self.layers) / groups if groups else 0.0

    @property
    def param_sparsity(self) -> float:
        params = sum(layer.params for layer in self.layers)
        return sum(layer.zero_params for layer in self.layers) / params if params else 0.0

    def to_dict(self) -> dict:
        return {
            "group_sparsity": self.group_sparsity,
            "param_sparsity": self.param_sparsity,
            "layers": [vars(layer) for layer in self.layers],
        }


@torch.no_grad()
def sparsity_stats(model: nn.Module, axis: Axis = "in") -> SparsityStats:
    """Exact zeros only: a group counts as sparse when every weight in it is 0."""
    stats = SparsityStats()
    for name, weight in shared_conv_weights(model):
        zero = group_norms(weight, axis) == 0
        stats.layers.append(
            LayerSparsity(
                name, zero.numel(), int(zero.sum()), weight.numel(), int(zero.sum()) * group_size(weight, axis)
            )
        )
    return stats
