"""Shared pieces of the ordinary (non-episodic) multi-task methods.

`MTLMethod` trains one shared network on batches that carry every seen task. A subclass decides
how the per-task losses become an update by overriding ``backward`` (loss weighting) or by
combining per-task gradients of the shared parameters (gradient manipulation), using the helpers
below; ``backward`` returns the task weights it used (logged as ``w/<task>``) or None.
``make_optimizer`` chooses the optimiser (fixed-λ's `ProximalAdam` takes its proximal step inside
``optimizer.step()``); ``after_step`` runs after the optimiser step (prune's masks, FAMO's logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtbench.training import Method, TrainContext


@dataclass
class MTLConfig:
    """Common options of the ordinary multi-task methods (none yet: the budget sets lr and batch)."""


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the shared backbone (the ones whose gradients conflict across tasks)."""
    return [p for p in model.backbone.parameters() if p.requires_grad]


def task_gradients(losses: list[Tensor], params: list[nn.Parameter]) -> Tensor:
    """Gradients of each loss w.r.t. ``params``, flattened: a (T, P) matrix (zeros where unused)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return torch.stack(rows)


def assign_gradient(params: list[nn.Parameter], flat: Tensor) -> None:
    """Write a flat gradient vector into ``params``' ``.grad`` (replacing what was there)."""
    offset = 0
    for param in params:
        count = param.numel()
        param.grad = flat[offset : offset + count].view_as(param).clone()
        offset += count


def backward_heads(model: nn.Module, losses: list[Tensor]) -> None:
    """Gradients of the heads only (each head sees only its own task's loss), leaving the backbone alone."""
    heads = [p for p in model.heads.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(losses), heads, retain_graph=True, allow_unused=True)
    for param, grad in zip(heads, grads):
        param.grad = grad


class MTLMethod(Method):
    """One shared network, one Adam optimiser, batches with every seen task."""

    kind = "mtl"

    def setup(self, ctx: TrainContext) -> None:
        self.model = ctx.new_model()
        self.optimizer = self.make_optimizer(ctx)

    def make_optimizer(self, ctx: TrainContext) -> torch.optim.Optimizer:
        """The engine's Adam (`TrainContext.make_optimizer`) over `trainable_parameters`; sparse methods
        pass `ProximalAdam` and its parameter groups to it instead."""
        return ctx.make_optimizer(self.trainable_parameters())

    def trainable_parameters(self) -> list[Tensor]:
        """What the optimiser updates; methods with their own weights (e.g. log-variances) add them."""
        return list(self.model.parameters())

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor | None:
        """Set the gradients of this step; return the task weights used (one per ``ctx.task_names``), or None.

        Equal weighting: gradients of the sum of the task losses, nothing to log.
        """
        sum(losses.values()).backward()
        return None

    def after_step(self, ctx: TrainContext, step: int) -> None:
        """Called after every optimiser step."""

    def step(self, ctx: TrainContext, step: int) -> dict[str, Tensor]:
        """One update; returns the step's losses (and task weights) as detached 0-dim tensors on their device.

        Nothing here waits for the device: `mtbench.training.train` turns the values into floats only at
        the steps it records (every ``log_every``), so a CUDA step is queued without a host round trip.
        """
        self.model.train()
        batch = ctx.train_batch(step)
        losses = ctx.losses(self.model, batch, ctx.task_names)
        self.optimizer.zero_grad(set_to_none=True)
        weights = self.backward(ctx, step, losses)
        self.optimizer.step()
        self.after_step(ctx, step)
        return {
            "loss": sum(l.detach() for l in losses.values()),
            **{f"loss/{t}": l.detach() for t, l in losses.items()},
            **({} if weights is None else {f"w/{t}": w for t, w in zip(ctx.task_names, weights.detach())}),
        }
