"""The multi-task baselines (uw, dwa, gradnorm, pcgrad, mgda, cagrad, famo) and their aggregators.

Unit tests compare against hand-worked values or an independent solver; the integration test runs
every method on a tiny in-memory NYUv2-shaped batch through a hand-built `TrainContext`.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch
from conftest import random_nyu_context
from scipy.optimize import minimize

from mtbench.aggregators import (
    cagrad,
    cagrad_objective,
    cagrad_weights,
    frank_wolfe_min_norm,
    gram,
    min_norm_two,
    min_norm_weights,
    pcgrad,
)
from mtbench.training import TrainContext

METHODS = ["uw", "dwa", "gradnorm", "pcgrad", "mgda", "cagrad", "famo"]


def info(name: str):
    return importlib.import_module(f"mtbench_baselines.{name}").METHOD


def on_simplex(w, atol: float = 1e-9) -> bool:
    w = np.asarray(w, dtype=np.float64)
    return bool((w >= -atol).all() and abs(w.sum() - 1.0) <= 1e-6)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ctx() -> TrainContext:
    return random_nyu_context(count=8)


# --- PCGrad --------------------------------------------------------------------------------------------


def test_pcgrad_projects_conflicting_gradients():
    # g1 = (1, 0), g2 = (−1, 1): g1·g2 = −1 < 0.
    # g1 − (−1/2)(−1, 1) = (0.5, 0.5);  g2 − (−1/1)(1, 0) = (0, 1);  sum (0.5, 1.5).
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    out = pcgrad(G, np.random.default_rng(0))
    assert torch.allclose(out, torch.tensor([0.5, 1.5], dtype=torch.float64))
    # after projection neither task's gradient conflicts with the other's original
    assert torch.dot(torch.tensor([0.5, 0.5], dtype=torch.float64), G[1]) == 0


def test_pcgrad_leaves_agreeing_gradients_alone():
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    for seed in range(3):
        assert torch.allclose(pcgrad(G, np.random.default_rng(seed)), torch.tensor([2.0, 3.0]))


def test_pcgrad_is_deterministic_given_the_rng():
    G = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pcgrad(G, np.random.default_rng([0, 5])), pcgrad(G, np.random.default_rng([0, 5])))


# --- min-norm (MGDA) -----------------------------------------------------------------------------------


def test_min_norm_orthogonal_equal_norms_is_uniform():
    for K in (2, 3):
        G = 3.0 * torch.eye(K, 5, dtype=torch.float64)
        assert np.allclose(min_norm_weights(G).numpy(), np.full(K, 1.0 / K), atol=1e-6)
        assert np.allclose(frank_wolfe_min_norm(gram(G)), np.full(K, 1.0 / K), atol=1e-8)


def test_min_norm_vertex_when_one_gradient_dominates():
    # g2 = 2 g1: the shortest point of the segment is g1 itself
    G = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    assert np.allclose(min_norm_two(gram(G)), [1.0, 0.0])
    assert np.allclose(frank_wolfe_min_norm(gram(G)), [1.0, 0.0])


def test_min_norm_closed_form_matches_general_solver_for_two_tasks():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        G = torch.randn(2, 6, generator=generator, dtype=torch.float64)
        closed, general = min_norm_two(gram(G)), frank_wolfe_min_norm(gram(G))
        assert on_simplex(closed) and on_simplex(general)
        assert np.allclose(closed, general, atol=1e-8)
        # and it is a minimiser along the segment (independent grid check)
        grid = np.linspace(0, 1, 1001)
        norms = [np.linalg.norm(g * G[0].numpy() + (1 - g) * G[1].numpy()) for g in grid]
        assert np.linalg.norm(closed @ G.numpy()) <= min(norms) + 1e-12


def test_min_norm_matches_an_independent_qp_solver():
    generator = torch.Generator().manual_seed(1)
    for K, P in ((3, 8), (4, 8), (6, 8), (12, 6)):  # the last: more tasks than dimensions (singular M)
        G = torch.randn(K, P, generator=generator, dtype=torch.float64) + 0.5
        w = min_norm_weights(G).numpy()
        assert on_simplex(w)
        M = gram(G)
        reference = minimize(
            lambda v: v @ M @ v,
            np.full(K, 1.0 / K),
            jac=lambda v: 2 * M @ v,
            method="SLSQP",
            bounds=[(0, 1)] * K,
            constraints=({"type": "eq", "fun": lambda v: v.sum() - 1},),
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        assert w @ M @ w <= reference @ M @ reference * (1 + 1e-8) + 1e-12


# --- CAGrad --------------------------------------------------------------------------------------------


def test_cagrad_with_c_zero_is_the_mean_gradient():
    G = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    d, w = cagrad(G, c=0.0)
    assert torch.allclose(d, G.mean(dim=0)) and on_simplex(w.numpy())


def test_cagrad_solver_beats_random_simplex_points():
    rng = np.random.default_rng(3)
    for K in (2, 3, 5):
        G = torch.as_tensor(rng.normal(size=(K, 12)), dtype=torch.float64)
        M = gram(G)
        for c in (0.2, 0.5, 0.9):
            w = cagrad_weights(M, c)
            assert on_simplex(w)
            best = cagrad_objective(w, M, c)
            for point in rng.dirichlet(np.ones(K), size=20):
                assert best <= cagrad_objective(point, M, c) + 1e-9


def test_cagrad_update_formula():
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    # orthogonal unit gradients: wᵀG g₀ = ½ for every w, ‖g_w‖ is smallest at w = (½, ½), so g_w = g₀ and
    # d = g₀ (1 + c) / (1 + c²)
    c = 0.5
    d, w = cagrad(G, c=c)
    assert np.allclose(w.numpy(), [0.5, 0.5], atol=1e-5)
    assert torch.allclose(d, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64) * (1 + c) / (1 + c**2), atol=1e-5)
    # general G: d from the returned w by the paper's formula
    G = torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    d, w = cagrad(G, c=c, rescale=False)
    g0, gw = G.mean(0), w @ G
    assert torch.allclose(d, g0 + c * g0.norm() / gw.norm() * gw)


# --- FAMO ----------------------------------------------------------------------------------------------


def test_famo_loss_weights():
    from mtbench_baselines.famo import famo_loss_weights

    # z = (½, ½), L = (1, 2): c = 1 / (½ + ¼) = 4/3, weights c·z/L = (2/3, 1/3)
    weights = famo_loss_weights(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]), eps=0.0)
    assert torch.allclose(weights, torch.tensor([2 / 3, 1 / 3]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_famo_logit_update_hand_worked(ctx: TrainContext, optimizer: str):
    from mtbench_baselines.famo import FAMO, FAMOConfig

    method = FAMO(FAMOConfig(optimizer=optimizer))
    method.setup(ctx)
    method.logits.data = torch.zeros(2)  # a two-task logit vector for the hand-worked step
    before, after = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.8])
    method.update_logits(before, after)
    # δ-input: log-loss decreases (log 2, log(2/1.8)); softmax Jacobian at ξ = 0 is [[¼, −¼], [−¼, ¼]]
    g1 = 0.25 * (math.log(2.0) - math.log(2.0 / 1.8))
    if optimizer == "sgd":  # ξ ← ξ − β(δ + γξ) with ξ = 0
        expected = [-0.025 * g1, 0.025 * g1]
    else:  # Adam's first step moves each coordinate by lr against the sign of its gradient
        expected = [-0.025, 0.025]
    assert torch.allclose(method.logits.detach(), torch.tensor(expected), atol=1e-6)
    # the task whose log loss fell most (task 0) loses weight
    assert method.z[0] < 0.5 < method.z[1]


# --- DWA -----------------------------------------------------------------------------------------------


def test_dwa_weights_hand_worked():
    from mtbench_baselines.dwa import dwa_weights

    # r = (0.5/1, 2/2) = (0.5, 1), T = 2: w = 2·(e^0.25, e^0.5) / (e^0.25 + e^0.5)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert np.allclose(dwa_weights([[1.0, 2.0], [0.5, 2.0]], 1, 2.0), [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])
    # window 2: L̄(t−1) = (1, 1), L̄(t−2) = (3, 1) -> r = (1/3, 1)
    e1, e2 = math.exp(1 / 6), math.exp(0.5)
    history = [[4.0, 1.0], [2.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    assert np.allclose(dwa_weights(history, 2, 2.0), [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])


def test_dwa_method_uses_the_previous_two_steps(ctx: TrainContext):
    method = info("dwa").method(info("dwa").config())
    method.setup(ctx)
    logs = [method.step(ctx, s) for s in range(3)]
    names = ctx.task_names
    for log in logs[:2]:
        assert all(log[f"w/{t}"] == 1.0 for t in names)
    ratios = np.array([logs[1][f"loss/{t}"] / logs[0][f"loss/{t}"] for t in names])
    expected = len(names) * np.exp(ratios / 2) / np.exp(ratios / 2).sum()
    assert np.allclose([logs[2][f"w/{t}"] for t in names], expected, rtol=1e-5)


# --- UW ------------------------------------------------------------------------------------------------


def test_uw_loss_hand_worked(ctx: TrainContext):
    from mtbench_baselines.uw import uncertainty_loss

    # L = (2, 3), s = (0, log 2): 2·1 + 0 + 3/2 + log 2
    value = uncertainty_loss(torch.tensor([2.0, 3.0]), torch.tensor([0.0, math.log(2.0)]))
    assert math.isclose(float(value), 3.5 + math.log(2.0), rel_tol=1e-6)
    method = info("uw").method(info("uw").config())
    method.setup(ctx)
    assert any(p is method.log_vars for p in method.trainable_parameters())
    losses = {t: torch.tensor(v, requires_grad=True) for t, v in zip(ctx.task_names, (2.0, 3.0, 0.5))}
    method.backward(ctx, 0, losses)
    # ∂/∂s_k [e^{−s_k} L_k + s_k] at s = 0 is 1 − L_k; ∂/∂L_k is e^{−s_k} = 1
    assert torch.allclose(method.log_vars.grad, torch.tensor([-1.0, -2.0, 0.5]))
    assert all(float(l.grad) == 1.0 for l in losses.values())


# --- GradNorm ------------------------------------------------------------------------------------------


def test_gradnorm_loss_hand_worked():
    from mtbench_baselines.gradnorm import gradnorm_loss

    # G = (1, 1); L̃ = (1, 0.5), r = (4/3, 2/3); target (4/3)^1.5, (2/3)^1.5
    value = gradnorm_loss(torch.ones(2), torch.ones(2), torch.tensor([1.0, 0.5]), torch.ones(2), 1.5)
    assert math.isclose(float(value), abs(1 - (4 / 3) ** 1.5) + abs(1 - (2 / 3) ** 1.5), rel_tol=1e-6)


def test_gradnorm_weights_move_towards_the_slower_task(ctx: TrainContext):
    from mtbench_baselines.gradnorm import GradNorm, GradNormConfig

    method = GradNorm(GradNormConfig(weight_lr_scale=10.0))
    method.setup(ctx)
    method.initial_losses = torch.tensor([1.0, 1.0, 1.0])
    # equal gradient norms; task 0's loss has not moved, task 2's has halved
    method.update_weights(torch.ones(3), torch.tensor([1.0, 0.75, 0.5]))
    w = method.weights.detach()
    assert math.isclose(float(w.sum()), 3.0, rel_tol=1e-6)
    assert w[0] > 1.0 > w[2]


def test_gradnorm_measures_the_last_main_path_conv(ctx: TrainContext):
    method = info("gradnorm").method(info("gradnorm").config())
    method.setup(ctx)
    assert method.layer_name == "stage3.0.conv2"
    assert method.layer is method.model.backbone.stage3[0].conv2.weight


# --- integration ---------------------------------------------------------------------------------------


def backbone_vector(method) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in method.model.backbone.parameters()])


def test_every_method_trains_and_differs(ctx: TrainContext):
    """Two steps run and move every parameter group; three steps give pairwise different backbones.

    (Three because DWA uses equal weights for its first two steps, so after two it equals ew exactly.)
    """
    finals = {}
    for name in ["ew", *METHODS]:
        method = info(name).method(info(name).config())
        method.setup(ctx)
        before = [p.detach().clone() for p in method.model.parameters()]
        backbone_before = backbone_vector(method)
        for step in range(2):
            logged = method.step(ctx, step)
            assert all(math.isfinite(v) for v in logged.values()), (name, logged)
        after = list(method.model.parameters())
        assert not torch.equal(backbone_vector(method), backbone_before), name
        for head in method.model.heads.values():
            head_params = {id(p) for p in head.parameters()}
            moved = [not torch.equal(b, a.detach()) for b, a in zip(before, after) if id(a) in head_params]
            assert any(moved), name
        method.step(ctx, 2)
        finals[name] = backbone_vector(method)
        if name == "gradnorm":
            assert math.isclose(float(method.weights.detach().sum()), 3.0, rel_tol=1e-5)
    for a, b in itertools.combinations(finals, 2):
        assert not torch.equal(finals[a], finals[b]), (a, b)


WEIGHTED = ["uw", "dwa", "gradnorm", "mgda", "cagrad", "famo"]


@pytest.mark.parametrize("name", WEIGHTED)
def test_logged_task_weights_are_the_ones_backward_used(ctx: TrainContext, name: str):
    """`MTLMethod.step` logs ``w/<task>`` from what ``backward`` returns: the weights of this step's update."""
    method = info(name).method(info(name).config())
    method.setup(ctx)
    returned = []
    original = method.backward

    def spy(*args):
        weights = original(*args)
        returned.append([float(w) for w in weights])
        return weights

    method.backward = spy
    for step in range(3):
        logged = method.step(ctx, step)
        assert [logged[f"w/{t}"] for t in ctx.task_names] == returned[-1], (name, step)
    first = returned[0]
    if name in ("uw", "dwa", "gradnorm"):  # start from weight 1 per task
        assert first == [1.0, 1.0, 1.0]
    if name == "famo":  # ξ = 0: uniform
        assert np.allclose(first, 1 / 3)
    if name in ("mgda", "cagrad"):
        assert on_simplex(first, atol=1e-6)


def test_equal_weighting_logs_no_task_weights(ctx: TrainContext):
    method = info("ew").method(info("ew").config())
    method.setup(ctx)
    assert not any(key.startswith("w/") for key in method.step(ctx, 0))


def test_every_optimizer_comes_from_the_engine_factory(ctx: TrainContext, monkeypatch):
    """Methods build their Adam (or `ProximalAdam`) through `TrainContext.make_optimizer`; so does the meta-test."""
    from mtbench import protocol
    from mtbench.sparsity import ProximalAdam

    built = []
    factory = TrainContext.make_optimizer

    def spy(self, *args, **kwargs):
        optimizer = factory(self, *args, **kwargs)
        built.append(optimizer)
        return optimizer

    monkeypatch.setattr(TrainContext, "make_optimizer", spy)
    expected = {
        "ew": ["optimizer"],
        "uw": ["optimizer"],
        "fixed-lambda": ["optimizer"],
        "gradnorm": ["optimizer", "weight_optimizer"],
        "famo": ["optimizer", "logit_optimizer"],
        "meta-sparsity": ["optimizer"],
    }
    for name, attributes in expected.items():
        built.clear()
        method_info = info(name.replace("-", "_"))
        method = method_info.method(method_info.config())
        method.setup(ctx)
        assert [id(getattr(method, a)) for a in attributes] == [id(o) for o in built], name
        assert isinstance(method.optimizer, ProximalAdam) == (name in ("fixed-lambda", "meta-sparsity")), name
        assert method.optimizer.defaults["lr"] == ctx.budget.lr, name
    built.clear()
    stl = info("stl").method(info("stl").config())
    stl.setup(ctx)
    assert sorted(map(id, stl.optimizers.values())) == sorted(map(id, built))
    built.clear()
    task = ctx.seen[1]
    protocol.finetune(stl.models[task.name], task, ctx.train, ctx, seed=0)
    assert len(built) == 1 and built[0].param_groups[0]["lr"] == ctx.budget.finetune_lr


@pytest.mark.parametrize(
    "name, options", [("mgda", {"upper_bound": False}), ("famo", {"optimizer": "sgd"}), ("cagrad", {"c": 0.0})]
)
def test_variants_run(ctx: TrainContext, name: str, options: dict):
    method = info(name).method(info(name).config(**options))
    method.setup(ctx)
    start = backbone_vector(method)
    method.step(ctx, 0)
    method.step(ctx, 1)
    assert not torch.equal(backbone_vector(method), start)


def test_methods_are_registered_with_papers():
    from mtbench.methods import methods

    registry = methods()
    for name in METHODS:
        entry = registry.get(name)
        assert entry.paper and entry.link.startswith("https://arxiv.org/abs/") and entry.deviations, name
