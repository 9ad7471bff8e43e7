"""CAGrad (Liu et al. 2021): the update that maximises the worst task's improvement near the mean gradient."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mtbench.aggregators import cagrad
from mtbench.methods import MethodInfo
from mtbench.mtl import MTLMethod, assign_gradient, backward_heads, shared_parameters, task_gradients
from mtbench.options import bounded
from mtbench.training import TrainContext


@dataclass
class CAGradConfig:
    """Attributes:
    c: radius of the ball around the mean gradient g₀, in units of ‖g₀‖ (0 gives plain averaging).
    rescale: divide the update by 1 + c² (the default of the authors' code).
    """

    c: float = bounded(0.5, at_least=0)
    rescale: bool = True


class CAGrad(MTLMethod):
    """Shared backbone: d = g₀ + (c‖g₀‖/‖g_w‖) g_w over the shared parameters; heads: their own gradient.

    Where the solver runs (by design): on the CPU, once per step. Only the K × K Gram matrix of the task
    gradients (K² numbers) is copied to the host; SLSQP (`mtbench.aggregators.cagrad_weights`, SciPy,
    float64) solves the dual over the K weights there and w goes back to the device (a non-blocking copy
    from pinned memory, `mtbench.aggregators.to_device`), where d is formed on the (K, P) gradients. That
    is one host synchronisation per step (the Gram matrix's read) and none elsewhere in it (w is logged as a
    device tensor; ``tests/test_host_syncs.py`` holds the step to exactly that one read and that one copy).
    A device solver would need a hand-written constrained optimiser with a data-dependent stopping rule
    over K (2–7) numbers — kernel launches and host checks costing more than the one copy — and would move
    the numbers away from SciPy's.
    """

    def backward(self, ctx: TrainContext, step: int, losses: dict[str, Tensor]) -> Tensor:
        current = [losses[t] for t in ctx.task_names]
        backward_heads(self.model, current)
        shared = shared_parameters(self.model)
        d, w = cagrad(task_gradients(current, shared), self.config.c, self.config.rescale)
        assign_gradient(shared, d)
        return w.detach()


METHOD = MethodInfo(
    name="cagrad",
    summary="CAGrad: conflict-averse update within c‖g₀‖ of the mean gradient g₀",
    method=CAGrad,
    config=CAGradConfig,
    paper="Liu, Liu, Jin, Stone & Liu, Conflict-Averse Gradient Descent for Multi-task Learning (2021)",
    link="https://arxiv.org/abs/2110.14048",
    deviations="the dual over w ∈ Δ is solved with SLSQP on the K weights (Gram matrix only); the update is "
    "divided by 1 + c² (rescale, the authors' code default; the paper's Algorithm 1 does not); "
    "applied to the shared backbone only, heads get their own task's gradient; the mean-gradient "
    "scale (not the sum) as in the paper",
)
