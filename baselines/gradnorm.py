"""GradNorm (Chen et al. 2018): task weights learned to balance the gradient norms of the weighted losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod
from mtbench.options import bounded
from mtbench.sparsity import shared_conv_weights
from mtbench.training import TrainContext


@dataclass
class GradNormConfig:
    """Attributes:
    alpha: asymmetry α; the target norm of task k is Ḡ·r_k^α (the paper's NYUv2 value 1.5).
    weight_lr_scale: the task weights' Adam learning rate, as a multiple of the budget's learning rate.
    layer: name (in ``model.backbone``) of the conv whose weight gradients are balanced; "" picks
        the last shared conv of the main path (skipping residual ``project``/``downsample``
        shortcuts): ``stage3.<last>.conv2`` of the small backbone, ``4.<last>.conv3`` of ResNet-50.
    min_weight: floor applied to the weights before renormalising (keeps them positive).
    """

    alpha: float = bounded(1.5, at_least=0)
    weight_lr_scale: float = bounded(1.0, above=0)
    layer: str = ""
    min_weight: float = bounded(1e-3, at_least=0)


def last_shared_conv(model: nn.Module, name: str = "") -> tuple[str, nn.Parameter]:
    """The conv kernel GradNorm measures: ``name`` if given, else the last main-path conv of the backbone."""
    convs = shared_conv_weights(model)
    if name:
        found = dict(convs)
        if name not in found:
            raise KeyError(f"no conv {name!r} in the backbone; have {', '.join(found)}")
        return name, found[name]
    main_path = [(n, w) for n, w in convs if "project" not in n and "downsample" not in n]
    return main_path[-1]


def gradnorm_loss(weights: Tensor, grad_norms: Tensor, losses: Tensor, initial_losses: Tensor, alpha: float) -> Tensor:
    """L_grad = Σ_k |G_k − Ḡ·r_k^α| with G_k = w_k‖∇_W L_k‖, r_k = L̃_k / mean(L̃), L̃_k = L_k / L_k(0).

    ``grad_norms`` are the unweighted ‖∇_W L_k‖ (constants), so G_k is linear in w_k and the
    gradient of L_grad w.r.t. ``weights`` needs no second-order graph. The target Ḡ·r_k^α is a
    constant, as in the paper.
    """
    G = weights * grad_norms
    ratios = losses / initial_losses
    target = (G.mean() * (ratios / ratios.mean()) ** alpha).detach()
    return (G - target).abs().sum()


class GradNorm(MTLMethod):
    """The network minimises Σ_k w_k L_k; the weights w separately minimise `gradnorm_loss`, then Σ w = K."""

    saved_tensors = ("weights",)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        K = len(ctx.task_names)
        self.weights = nn.Parameter(torch.ones(K, device=ctx.device))
        self.weight_optimizer = ctx.make_optimizer([self.weights], lr=self.config.weight_lr_scale * ctx.budget.lr)
        self.initial_losses: Tensor | None = None
        self.layer_name, self.layer = last_shared_conv(self.model, self.config.layer)

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        """Returns the weights this step's loss used (`update_weights` then moves them for the next step)."""
        current = torch.stack([losses[t] for t in ctx.task_names])
        grad_norms = torch.stack(
            [torch.autograd.grad(loss, self.layer, retain_graph=True)[0].norm() for loss in current]
        ).detach()
        if self.initial_losses is None:
            self.initial_losses = current.detach().clone()
        used = self.weights.detach().clone()
        (used * current).sum().backward()
        self.update_weights(grad_norms, current.detach())
        return used

    def update_weights(self, grad_norms: Tensor, losses: Tensor) -> None:
        """One step of the weights on the GradNorm loss, then w ← K·w / Σ w (floored at ``min_weight``)."""
        assert self.initial_losses is not None
        self.weight_optimizer.zero_grad(set_to_none=True)
        gradnorm_loss(self.weights, grad_norms, losses, self.initial_losses, self.config.alpha).backward()
        self.weight_optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(min=self.config.min_weight)
            self.weights.mul_(len(self.weights) / self.weights.sum())


METHOD = MethodInfo(
    name="gradnorm",
    summary="GradNorm: task weights trained to equalise gradient norms at the last shared conv",
    method=GradNorm,
    config=GradNormConfig,
    paper="Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for Adaptive Loss "
    "Balancing in Deep Multitask Networks (2018)",
    link="https://arxiv.org/abs/1711.02257",
    deviations="gradient norms taken w.r.t. the last main-path conv kernel of the shared backbone (stage3's "
    "conv2 of the small nets, layer4's last conv3 of ResNet-50); L_k(0) is the first training "
    "step's batch loss; the weights have their own Adam (the budget's learning rate times "
    "weight_lr_scale) and are floored at min_weight before renormalising to Σ w = K",
)
