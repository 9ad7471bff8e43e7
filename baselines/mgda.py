"""MGDA-UB (Sener & Koltun 2018): the minimum-norm convex combination of the task gradients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from mtbench.aggregators import min_norm_weights
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod, assign_gradient, backward_heads, shared_parameters, task_gradients
from mtbench.options import bounded
from mtbench.training import TrainContext


@dataclass
class MGDAConfig:
    """Attributes:
    upper_bound: MGDA-UB: solve for the weights with the gradients w.r.t. the shared representation
        (the backbone's output on the batch) — one backbone backward in all; False: exact MGDA on
        the per-task gradients of every shared parameter (K backbone backwards).
    scale_by_tasks: multiply the min-norm combination Σ α_k g_k (α on the simplex) by K, which puts
        the shared update on the scale of equal weighting's Σ_k ∇L_k (the heads get their own
        task's unweighted gradient either way).
    max_iter: Frank–Wolfe iterations (with away steps) of the min-norm solver for K > 2 (closed form
        for K = 2).
    """

    upper_bound: bool = True
    scale_by_tasks: bool = True
    max_iter: int = bounded(1000, at_least=1)


class MGDA(MTLMethod):
    """α = argmin_{α∈Δ} ‖Σ_k α_k ∇L_k‖² (on Z for UB); shared backbone gets K·Σ_k α_k ∇_θ L_k.

    Where the solver runs (by design): on the CPU, once per step. The K × K Gram matrix ``G Gᵀ`` is
    computed on the device; that matrix (K² numbers) is the only thing copied to the host, where the
    closed form (K = 2) or Frank–Wolfe with away steps (`mtbench.aggregators.min_norm_weights`) solves
    for α in float64 NumPy, and α goes back to the device (a non-blocking copy from pinned memory,
    `mtbench.aggregators.to_device`). This is one host synchronisation per step (the Gram matrix's read)
    and none elsewhere in it (the weights are applied and logged as device tensors;
    ``tests/test_host_syncs.py`` holds the step to exactly that one read and that one copy). Frank–Wolfe is
    an iterative loop with data-dependent stopping and support changes over K (2–7) numbers: on a GPU each
    of its up to ``max_iter`` iterations would be a handful of tiny kernel launches plus a host check of
    the stopping rule, slower than the one copy, and float64 NumPy keeps the weights identical on every
    device.
    """

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self._features: Tensor | None = None

    @contextmanager
    def _capture_features(self) -> Iterator[None]:
        """Keep the backbone's output (the shared representation Z) of the forward passes inside the block."""

        def keep(module: torch.nn.Module, inputs: object, output: Tensor) -> None:
            self._features = output

        handle = self.model.backbone.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self._features = None

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        current = [losses[t] for t in ctx.task_names]
        backward_heads(self.model, current)
        shared = shared_parameters(self.model)
        if self.config.upper_bound:
            assert self._features is not None, "the backbone's output was not captured"
            Z = task_gradients(current, [self._features]).float()
            alphas = min_norm_weights(Z, self.config.max_iter)
            combined = sum(a * loss for a, loss in zip(alphas, current))  # α stays a device tensor
            grads = torch.autograd.grad(combined, shared, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, shared)])
        else:
            G = task_gradients(current, shared)
            alphas = min_norm_weights(G, self.config.max_iter)
            flat = alphas.to(G.dtype) @ G
        assign_gradient(shared, flat * len(current) if self.config.scale_by_tasks else flat)
        return alphas.detach()

    def step(self, ctx: TrainContext, step: int) -> dict[str, float]:
        with self._capture_features():  # backward solves for α on the backbone's output
            return super().step(ctx, step)


METHOD = MethodInfo(
    name="mgda",
    summary="MGDA-UB: min-norm convex combination of the task gradients (Frank–Wolfe / closed form)",
    method=MGDA,
    config=MGDAConfig,
    paper="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization (2018)",
    link="https://arxiv.org/abs/1810.04650",
    deviations="the min-norm solver adds away steps to the paper's Frank–Wolfe (linear convergence, exact "
    "zeros) and has a closed form for K = 2; the shared update is scaled by K (scale_by_tasks) to match "
    "equal weighting's loss sum; no "
    "gradient normalisation before the solve (the authors' code offers l2/loss normalisations); "
    "upper_bound=False gives exact MGDA on the shared parameters' gradients",
)
