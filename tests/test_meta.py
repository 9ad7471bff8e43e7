"""Meta-sparsity: λ's meta-gradient through the adapted parameters, checked by finite differences."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mtbench import catalog
from mtbench.meta import EpisodicMetaLearner, MetaConfig
from mtbench.presets import budget
from mtbench.sparsity import group_lasso_grad, group_norms, shared_conv_weights
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
    first_order: bool, per_layer: bool = False, inner_steps: int = 1, lam_path: str = "penalty"
) -> tuple[EpisodicMetaLearner, TrainContext]:
    ctx = tiny_context()
    method = EpisodicMetaLearner(
        MetaConfig(
            first_order=first_order,
            per_layer=per_layer,
            inner_steps=inner_steps,
            lam_init=0.05,
            inner_lr=0.1,
            query_split="train",
            lam_path=lam_path,  # type: ignore[arg-type]
        )
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


def _zero_some_groups(method: EpisodicMetaLearner) -> int:
    """Zero a third of the input-channel groups of every shared conv (as the prox would); returns how many."""
    zeroed = 0
    with torch.no_grad():
        for _, weight in shared_conv_weights(method.model):
            count = max(1, weight.shape[1] // 3)
            weight[:, :count] = 0
            zeroed += count
    return zeroed


@pytest.mark.parametrize("lam_path", ["penalty", "prox"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_with_zero_groups_is_finite_and_matches_finite_differences(first_order, lam_path):
    """Second order used to turn everything into NaN once a group was zero (autograd of √ at 0)."""
    method, ctx = learner(first_order, lam_path=lam_path)
    assert _zero_some_groups(method) > 0
    rho = method.rho.detach().clone()
    loss = query_loss_at(method, ctx, rho.clone().requires_grad_(True))
    params = list(method.model.parameters())
    analytic_rho, *analytic_params = torch.autograd.grad(loss, [method.rho, *params], allow_unused=True)
    assert torch.isfinite(analytic_rho).all() and analytic_rho.abs().max() > 0
    assert all(g is None or torch.isfinite(g).all() for g in analytic_params)
    h = 1e-6
    numeric = (query_loss_at(method, ctx, rho + h).detach() - query_loss_at(method, ctx, rho - h).detach()) / (2 * h)
    assert analytic_rho.item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-9)
    if first_order:
        return
    # and θ's second-order meta-gradient along a direction that leaves the zero groups at zero
    method.rho = rho.clone()
    generator = torch.Generator().manual_seed(0)  # a fixed direction: the test's outcome must not hang on test order
    noise = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    direction = [n * (p != 0) if p.dim() == 4 else n for n, p in zip(noise, params)]
    slope = sum((g * d).sum() for g, d in zip(analytic_params, direction) if g is not None).item()
    originals = [p.detach().clone() for p in params]

    def shifted(step: float) -> float:
        with torch.no_grad():
            for p, o, d in zip(params, originals, direction):
                p.copy_(o + step * d)
        return query_loss_at(method, ctx, rho.clone()).item()

    numeric_slope = (shifted(h) - shifted(-h)) / (2 * h)
    shifted(0.0)
    assert slope == pytest.approx(numeric_slope, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("lam_path", ["penalty", "prox"])
def test_second_order_training_stays_finite_for_several_steps_with_zero_groups(lam_path):
    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(
        MetaConfig(first_order=False, lam_init=30.0, lam_path=lam_path, query_split="train")  # type: ignore[arg-type]
    )
    method.setup(ctx)
    zero_steps = 0
    for step in range(6):
        logged = method.step(ctx, step)
        assert all(torch.isfinite(p).all() for p in method.model.parameters()), step
        assert torch.isfinite(method.rho).all() and all(map(lambda v: v == v, logged.values()))
        zero_steps += any((group_norms(w) == 0).any() for _, w in shared_conv_weights(method.model))
    assert zero_steps >= 3, "the test needs zero groups present for several steps"


def test_lambda_meta_gradient_is_recorded_with_its_sign_fraction():
    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(MetaConfig(lam_init=0.05))
    method.setup(ctx)
    logs = [method.step(ctx, step) for step in range(4)]
    signs = [entry["lambda_grad"] > 0 for entry in logs]
    assert logs[-1]["lambda_grad_positive"] == pytest.approx(sum(signs) / len(signs))
    assert all(entry["lambda_grad"] != 0 for entry in logs)


def test_online_hypergradient_is_lambda_times_gradient_dot_sensitivity():
    """ρ.grad = Σ_l λ ⟨∇_{θ_l} L_Q, Z_l⟩ and Z_l ← mask ⊙ (γZ_l + (θ_{t+1} − v_t)/λ), checked by hand."""
    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(MetaConfig(lam_init=0.5, hypergradient="online", horizon=4))
    method.setup(ctx)
    weights = [w for _, w in shared_conv_weights(method.model)]
    method.step(ctx, 0)
    assert any(z.abs().sum() > 0 for z in method.sensitivity)
    for z, w in zip(method.sensitivity, weights):  # zeroed groups carry no sensitivity
        assert torch.equal(z * (group_norms(w) == 0).view(1, -1, 1, 1), torch.zeros_like(z))
    previous = [z.clone() for z in method.sensitivity]
    lam = method.lam()
    captured = {}
    original = method._online_hypergradient

    def capture() -> None:
        captured["grads"] = [w.grad.clone() for w in weights]
        original()
        captured["rho_grad"] = method.rho.grad.clone()

    method._online_hypergradient = capture
    method.step(ctx, 1)
    expected = lam * sum((g * z).sum() for g, z in zip(captured["grads"], previous))
    assert captured["rho_grad"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_queries_come_from_the_meta_validation_split():
    from mtbench.episodes import meta_validation_split

    ctx = tiny_context(torch.float32)
    method = EpisodicMetaLearner(MetaConfig(lam_init=0.05))  # query_split="meta-val" by default
    method.setup(ctx)
    train_pool, val_pool = meta_validation_split(len(ctx.train), 0.2, minimum=ctx.budget.batch_size)
    assert not set(train_pool) & set(val_pool) and len(train_pool) + len(val_pool) == len(ctx.train)
    for index in range(20):
        episode = method.sampler.episode(index)
        assert set(episode.query) <= set(val_pool.tolist()) and set(episode.support) <= set(train_pool.tolist())
    other_seed = meta_validation_split(len(ctx.train), 0.2, minimum=ctx.budget.batch_size)
    assert np.array_equal(other_seed[1], val_pool)  # a fixed split, the same for every seed and method
