"""Meta-sparsity: λ's meta-gradient through the adapted parameters, checked by finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from mtbench import catalog
from mtbench.meta import EpisodicMetaLearner, MetaConfig
from mtbench.presets import budget
from mtbench.sparsity import group_lasso_grad, shared_conv_weights
from mtbench.training import TensorSet, TrainContext


def tiny_context(dtype: torch.dtype = torch.float64) -> TrainContext:
    generator = torch.Generator().manual_seed(0)
    tasks = [catalog.task("nyuv2", n) for n in ("semseg", "depth", "normal")]
    data = TensorSet(
        {
            "image": torch.rand(10, 3, 12, 16, generator=generator, dtype=dtype),
            "semantic13": torch.randint(-1, 13, (10, 12, 16), generator=generator),
            "depth": torch.rand(10, 1, 12, 16, generator=generator, dtype=dtype),
            "normal": torch.nn.functional.normalize(
                torch.randn(10, 3, 12, 16, generator=generator, dtype=dtype), dim=1
            ),
        }
    )
    return TrainContext(budget("smoke"), tasks, data, seed=0, device=torch.device("cpu"))


def learner(
    first_order: bool, per_layer: bool = False, inner_steps: int = 1
) -> tuple[EpisodicMetaLearner, TrainContext]:
    ctx = tiny_context()
    method = EpisodicMetaLearner(
        MetaConfig(first_order=first_order, per_layer=per_layer, inner_steps=inner_steps, lam_init=0.05, inner_lr=0.1)
    )
    method.setup(ctx)
    method.model.double()
    method.rho = method.rho.detach().double().requires_grad_(True)
    return method, ctx


def query_loss_at(method: EpisodicMetaLearner, ctx: TrainContext, rho: torch.Tensor) -> torch.Tensor:
    method.rho = rho
    drawn = method.sampler.episode(0)
    episode = type(drawn)(0, tuple(ctx.task_names), drawn.support, drawn.query)  # all tasks, fixed batches
    support, query = ctx.episode_batches(episode)
    return method.query_loss(ctx, episode, support, query)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("per_layer", [False, True])
def test_lambda_meta_gradient_matches_finite_differences(first_order, per_layer):
    method, ctx = learner(first_order, per_layer)
    rho = method.rho.detach().clone()
    analytic = torch.autograd.grad(query_loss_at(method, ctx, rho.clone().requires_grad_(True)), method.rho)[0]
    assert analytic.abs().max() > 0, "λ has no gradient path through the adapted parameters"
    h = 1e-6
    for index in range(min(3, rho.numel())):
        step = torch.zeros_like(rho)
        step[index] = h
        plus = query_loss_at(method, ctx, rho + step).detach()  # the inner loop itself needs autograd
        minus = query_loss_at(method, ctx, rho - step).detach()
        numeric = (plus - minus) / (2 * h)
        assert analytic[index].item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-9)


def test_first_order_lambda_gradient_equals_the_closed_form():
    """∂L_Q/∂ρ = λ ∂L_Q/∂λ = −α λ ⟨∇_θ′ L_Q(θ′), ∇Ω(θ)⟩ over the shared kernels (one inner step)."""
    method, ctx = learner(first_order=True)
    rho = method.rho.detach().clone().requires_grad_(True)
    loss = query_loss_at(method, ctx, rho)
    analytic = torch.autograd.grad(loss, rho)[0].item()

    # independent computation: adapt by hand, then take ∇L_Q at θ′ for the shared kernels
    lam = rho.exp().item()
    episode = method.sampler.episode(0)
    episode = type(episode)(0, tuple(ctx.task_names), episode.support, episode.query)
    support, query = ctx.episode_batches(episode)
    model = copy.deepcopy(method.model)
    params = list(model.parameters())
    grads = torch.autograd.grad(sum(ctx.losses(model, support, episode.tasks).values()), params, allow_unused=True)
    shared = [w for _, w in shared_conv_weights(model)]
    omega = group_lasso_grad([w.detach() for w in shared])
    omega_by_id = {id(w): g for w, g in zip(shared, omega)}
    with torch.no_grad():
        for p, g in zip(params, grads):
            total = (g if g is not None else torch.zeros_like(p)) + lam * omega_by_id.get(id(p), torch.zeros_like(p))
            p -= method.config.inner_lr * total
    query_grads = torch.autograd.grad(sum(ctx.losses(model, query, episode.tasks).values()), shared)
    closed = -method.config.inner_lr * lam * sum((gq * go).sum() for gq, go in zip(query_grads, omega)).item()
    assert analytic == pytest.approx(closed, rel=1e-6)


def test_meta_dense_has_no_lambda_and_no_prox():
    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(MetaConfig(lam_init=0.0, learn_lambda=False))
    method.setup(ctx)
    assert method.rho is None and method.lam() == 0.0
    method.step(ctx, 0)


def test_lambda_moves_and_prox_zeroes_groups_during_meta_training():
    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(MetaConfig(lam_init=50.0, rho_lr=0.1))
    method.setup(ctx)
    start = method.lam()
    for step in range(5):
        method.step(ctx, step)
    assert method.lam() != pytest.approx(start)
    norms = torch.cat([w.detach().pow(2).sum(dim=(0, 2, 3)) for _, w in shared_conv_weights(method.model)])
    assert (norms == 0).any(), "a large λ must zero some groups through the prox step"
