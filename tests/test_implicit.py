"""The implicit hypergradient dL_V/dλ of the group lasso (`mtbench.implicit`) and the `implicit-lambda` method.

Checked against a closed form on the support with a dense solve, against central finite differences of re-solved
problems (convex regression and a small network), and by λ learning on the convex problem from both sides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import random_nyu_context
from mtbench_baselines.implicit_lambda import ImplicitLambda
from torch import Tensor

from mtbench import sparsity
from mtbench.episodes import meta_validation_split
from mtbench.errors import ConfigError
from mtbench.implicit import conjugate_gradient, hypergradient, neumann_series
from mtbench.methods import methods
from mtbench.options import check_config
from mtbench.overrides import build_config
from mtbench.runner import RunRequest, execute
from mtbench.sparsity import group_lasso, group_norms, group_size, prox_group_lasso_, zero_group_masks
from mtbench.training import TrainContext

GROUP = 3  # features per group
GROUPS = 4  # two "layers" of two groups: features 0–5 and 6–11
LAYER_OF_GROUP = torch.tensor([0, 0, 1, 1])

# --- the convex problem: group-lasso least squares with an unpenalised intercept -------------------------------


@dataclass(frozen=True)
class Regression:
    """F = ½‖Xθ + b − y‖²/n (40 samples, 12 features in 4 groups of 3); L_V the same on a separate set."""

    x: Tensor
    y: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def design(self) -> Tensor:
        return torch.cat([self.x, torch.ones(len(self.x), 1, dtype=torch.float64)], dim=1)

    @property
    def design_val(self) -> Tensor:
        return torch.cat([self.x_val, torch.ones(len(self.x_val), 1, dtype=torch.float64)], dim=1)


def regression() -> Regression:
    generator = torch.Generator().manual_seed(0)
    truth = torch.tensor([2.0, -1.5, 1.8, 0.4, 0.3, -0.3, 0.15, -0.1, 0.1, 0.0, 0.0, 0.0], dtype=torch.float64)

    def draw(count: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(count, GROUP * GROUPS, generator=generator, dtype=torch.float64)
        return x, x @ truth + 0.3 + torch.randn(count, generator=generator, dtype=torch.float64)

    return Regression(*draw(40), *draw(100))


def group_lambdas(lams: tuple[float, float]) -> Tensor:
    return torch.tensor(lams, dtype=torch.float64)[LAYER_OF_GROUP]


def solve(problem: Regression, lams: tuple[float, float], start: Tensor | None = None, steps: int = 3000) -> Tensor:
    """(θ, b) minimising F + Σ_l λ_l Ω_l: proximal gradient with exact block soft-thresholding, step 1/L."""
    z = problem.design
    n = len(z)
    step = 1.0 / float(torch.linalg.eigvalsh(z.T @ z / n).max())
    tau = step * group_lambdas(lams) * math.sqrt(GROUP)
    x = torch.zeros(z.shape[1], dtype=torch.float64) if start is None else start.clone()
    for _ in range(steps):
        v = x - step * z.T @ (z @ x - problem.y) / n
        groups = v[:-1].view(GROUPS, GROUP)
        scale = (1 - tau / groups.norm(dim=1).clamp_min(1e-300)).clamp_min(0)
        x = torch.cat([(groups * scale[:, None]).reshape(-1), v[-1:]])
    return x


def stationarity(problem: Regression, x: Tensor, lams: tuple[float, float]) -> tuple[float, float]:
    """(largest KKT residual on the active set, smallest slack λ√n − ‖∇_g F‖ of a zero group)."""
    z = problem.design
    grad = z.T @ (z @ x - problem.y) / len(z)
    worst, slack = abs(float(grad[-1])), math.inf
    lam = group_lambdas(lams)
    for g in range(GROUPS):
        theta, gradient = x[g * GROUP : (g + 1) * GROUP], grad[g * GROUP : (g + 1) * GROUP]
        if theta.norm() > 0:
            worst = max(worst, float((gradient + lam[g] * math.sqrt(GROUP) * theta / theta.norm()).norm()))
        else:
            slack = min(slack, float(lam[g] * math.sqrt(GROUP) - gradient.norm()))
    return worst, slack


def support(x: Tensor) -> list[bool]:
    return (x[:-1].view(GROUPS, GROUP).norm(dim=1) > 0).tolist()


def val_loss(problem: Regression, x: Tensor) -> float:
    residual = problem.design_val @ x - problem.y_val
    return float(0.5 * residual @ residual / len(residual))


def as_kernels(x: Tensor) -> list[Tensor]:
    """(W1, W2, b): each layer's two groups as a 3 × 2 × 1 × 1 conv kernel with input-channel groups
    (W[o, c] = θ[3c + o]), and the intercept; leaves that require grad."""
    kernels = [x[6 * l : 6 * (l + 1)].view(2, GROUP).T.reshape(GROUP, 2, 1, 1) for l in range(2)]
    return [t.detach().clone().contiguous().requires_grad_(True) for t in (*kernels, x[-1:])]


def kernel_losses(problem: Regression, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """F and L_V as functions of the kernels (what `hypergradient` differentiates)."""
    w1, w2, b = params
    theta = torch.cat([w[:, :, 0, 0].T.reshape(-1) for w in (w1, w2)])

    def loss(x: Tensor, y: Tensor) -> Tensor:
        residual = x @ theta + b - y
        return 0.5 * residual @ residual / len(y)

    return loss(problem.x, problem.y), loss(problem.x_val, problem.y_val)


def active_system(problem: Regression, x: Tensor, lams: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """(H_A, ∇_A L_V, ∇_A Ω_l per layer as columns), dense, on the active coordinates (intercept included)."""
    z = problem.design
    dim = z.shape[1]
    lam = group_lambdas(lams)
    hessian = z.T @ z / len(z)
    omega = torch.zeros(dim, 2, dtype=torch.float64)
    active = torch.zeros(dim, dtype=torch.bool)
    active[-1] = True
    for g in range(GROUPS):
        block = slice(g * GROUP, (g + 1) * GROUP)
        theta = x[block]
        norm = theta.norm()
        if norm == 0:
            continue
        active[block] = True
        unit = theta / norm
        eye = torch.eye(GROUP, dtype=torch.float64)
        hessian[block, block] += lam[g] * math.sqrt(GROUP) / norm * (eye - torch.outer(unit, unit))
        omega[block, LAYER_OF_GROUP[g]] = math.sqrt(GROUP) * unit
    val_grad = problem.design_val.T @ (problem.design_val @ x - problem.y_val) / len(problem.y_val)
    return hessian[active][:, active], val_grad[active], omega[active]


def closed_form(problem: Regression, x: Tensor, lams: tuple[float, float]) -> Tensor:
    """dL_V/dλ_l = −∇_A Ω_lᵀ H_A⁻¹ ∇_A L_V, by a direct solve."""
    hessian, val_grad, omega = active_system(problem, x, lams)
    return -omega.T @ torch.linalg.solve(hessian, val_grad)


@functools.cache
def solved(lams: tuple[float, float]) -> tuple[Regression, Tensor]:
    problem = regression()
    x = solve(problem, lams, steps=2000)
    worst, slack = stationarity(problem, x, lams)
    assert worst < 1e-12 and slack > 1e-3, (worst, slack)  # a solution, with a zero group well inside its slack
    assert not all(support(x)), "the test needs a zero group"
    return problem, x


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


GLOBAL = (0.15, 0.15)
PER_LAYER = (0.05, 0.15)


@pytest.mark.parametrize("lams", [GLOBAL, PER_LAYER], ids=["global", "per-layer"])
@pytest.mark.parametrize("solver", ["cg", "neumann"])
def test_cg_and_neumann_match_the_closed_form_on_the_support(lams, solver):
    problem, x = solved(lams)
    params = as_kernels(x)
    train, val = kernel_losses(problem, params)
    hessian = active_system(problem, x, lams)[0]
    eigenvalues = torch.linalg.eigvalsh(hessian)
    low, high = float(eigenvalues[0]), float(eigenvalues[-1])
    lr, rate = 2 / (low + high), (high - low) / (high + low)  # the fastest Neumann step and its contraction
    lam: float | list[float] = lams[0] if lams == GLOBAL else list(lams)
    iterations = 60 if solver == "cg" else math.ceil(math.log(1e-13) / math.log(rate))
    result = hypergradient(train, val, params, params[:2], lam, solver=solver, iterations=iterations, neumann_lr=lr)
    exact = closed_form(problem, x, lams)
    error = relative(result.per_layer, exact)
    print(f"{solver} {lams}: relative error {error:.2e}, residual {float(result.solve.residual):.1e}")
    assert error < 1e-6
    if lams == GLOBAL:
        assert result.lam.shape == () and float(result.lam) == pytest.approx(float(exact.sum()), rel=1e-6)
    else:
        assert result.lam.shape == (2,)
    assert torch.allclose(result.rho, torch.as_tensor(lam, dtype=torch.float64) * result.lam)


def finite_difference(problem: Regression, x: Tensor, lams: tuple[float, float], layer: int | None) -> float:
    """(L_V(θ*(λ + h)) − L_V(θ*(λ − h)))/2h for all λ_l (``layer`` None) or one, re-solved from θ*(λ)."""
    h = 1e-4 * max(lams)
    values = []
    for sign in (1, -1):
        moved = tuple(lam + sign * h if layer in (None, l) else lam for l, lam in enumerate(lams))
        other = solve(problem, moved, start=x, steps=1000)
        assert support(other) == support(x), "the support changed inside [λ − h, λ + h]"
        assert stationarity(problem, other, moved)[0] < 1e-12
        values.append(val_loss(problem, other))
    return (values[0] - values[1]) / (2 * h)


def test_closed_form_matches_finite_differences_of_re_solved_problems():
    problem, x = solved(GLOBAL)
    exact = float(closed_form(problem, x, GLOBAL).sum())
    numeric = finite_difference(problem, x, GLOBAL, None)
    print(f"global λ: closed form {exact:.8g}, finite differences {numeric:.8g}")
    assert exact == pytest.approx(numeric, rel=1e-4)


def test_per_layer_hypergradient_matches_finite_differences_per_layer():
    problem, x = solved(PER_LAYER)
    params = as_kernels(x)
    train, val = kernel_losses(problem, params)
    implicit = hypergradient(train, val, params, params[:2], list(PER_LAYER), iterations=60).lam
    for layer in range(2):
        numeric = finite_difference(problem, x, PER_LAYER, layer)
        print(f"layer {layer}: implicit {float(implicit[layer]):.8g}, finite differences {numeric:.8g}")
        assert float(implicit[layer]) == pytest.approx(numeric, rel=1e-4)
    assert implicit[0] != pytest.approx(float(implicit[1]), rel=1e-2)  # two different derivatives


def test_solvers_report_their_residual_and_stop_at_a_tolerance():
    generator = torch.Generator().manual_seed(1)
    basis = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    matrix = basis @ basis.T + torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=generator, dtype=torch.float64)
    exact = torch.linalg.solve(matrix, b)
    x, info = conjugate_gradient(lambda v: matrix @ v, b, 40, tol=1e-10)
    assert info.iterations <= 9 and float(info.residual) <= 1e-10 and relative(x, exact) < 1e-8
    x, info = conjugate_gradient(lambda v: matrix @ v, b, 3)
    assert info.iterations == 3 and float(info.residual) == pytest.approx(float((matrix @ x - b).norm() / b.norm()))
    lr = 1 / float(torch.linalg.eigvalsh(matrix).max())
    x, info = neumann_series(lambda v: matrix @ v, b, 20, lr)
    assert float(info.residual) == pytest.approx(float((matrix @ x - b).norm() / b.norm()), rel=1e-9)
    # an indefinite matrix: CG stops at the negative curvature and never returns worse than x = 0
    indefinite = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    x, info = conjugate_gradient(lambda v: indefinite @ v, torch.ones(3, dtype=torch.float64), 10)
    assert bool(info.negative_curvature) and float(info.residual) <= 1.0 and torch.isfinite(x).all()
    # negative curvature along b itself: the steepest-descent fallback x = b (not x = 0, a vanishing hypergradient)
    negative = torch.diag(torch.tensor([-1.0, -2.0], dtype=torch.float64))
    b = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: negative @ v, b, 10)
    assert bool(info.negative_curvature) and torch.equal(x, b)
    assert float(info.residual) == pytest.approx(float((negative @ b - b).norm() / b.norm()), rel=1e-12)


# --- a small network: two branches of 1×1 convs (kernels with input-channel groups) ----------------------------

TEACHER = {
    "wa": torch.tensor([[1.0, -0.8, 0, 0], [0.5, 1.2, 0, 0]], dtype=torch.float64)[:, :, None, None],
    "wb": torch.tensor([[0, 0.9, 1.1, 0], [0, -1.0, 0.6, 0]], dtype=torch.float64)[:, :, None, None],
    "ha": torch.tensor([[1.0, -0.7]], dtype=torch.float64)[:, :, None, None],
    "hb": torch.tensor([[0.8, 0.9]], dtype=torch.float64)[:, :, None, None],
    "c": torch.tensor([0.2], dtype=torch.float64),
}
PENALISED = ("wa", "wb")
RIDGE = 1e-2  # part of F: weight decay removes the flat directions, so θ*(λ) is an isolated local minimum


def network(p: dict[str, Tensor], x: Tensor) -> Tensor:
    a = F.conv2d(torch.tanh(F.conv2d(x, p["wa"])), p["ha"], p["c"])
    return (a + F.conv2d(torch.tanh(F.conv2d(x, p["wb"])), p["hb"])).reshape(-1)


class Net:
    """y = ha·tanh(wa x) + hb·tanh(wb x) + c on 4 inputs (feature 3 irrelevant), wa and wb penalised by input
    channel; F = ½ MSE + ½ RIDGE ‖θ‖², L_V = ½ MSE on separate samples (float64)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)

        def draw(count: int) -> tuple[Tensor, Tensor]:
            x = torch.randn(count, 4, 1, 1, generator=generator, dtype=torch.float64)
            return x, network(TEACHER, x) + 0.3 * torch.randn(count, generator=generator, dtype=torch.float64)

        (self.x, self.y), (self.x_val, self.y_val) = draw(128), draw(128)
        self.start = {
            k: v + 0.3 * torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in TEACHER.items()
        }

    def train_loss(self, p: dict[str, Tensor]) -> Tensor:
        return 0.5 * (network(p, self.x) - self.y).pow(2).mean() + 0.5 * RIDGE * sum(v.pow(2).sum() for v in p.values())

    def val_loss(self, p: dict[str, Tensor]) -> Tensor:
        return 0.5 * (network(p, self.x_val) - self.y_val).pow(2).mean()

    def proximal_gradient(self, p: dict[str, Tensor], lam: float, steps: int, lr: float = 0.2) -> dict[str, Tensor]:
        p = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
        for _ in range(steps):
            grads = torch.autograd.grad(self.train_loss(p), list(p.values()))
            with torch.no_grad():
                for value, grad in zip(p.values(), grads):
                    value -= lr * grad
                prox_group_lasso_([p[k] for k in PENALISED], lr * lam)
        return p

    def newton(self, p: dict[str, Tensor], lam: float, steps: int = 12) -> dict[str, Tensor]:
        """Newton's method on the active set found (smooth there): polishes a proximal-gradient point to ~1e-14."""
        masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in p.items()}
        for k in PENALISED:
            masks[k] = zero_group_masks([p[k].detach()])[0].expand_as(p[k])
        keys = list(p)

        def full(z: Tensor) -> dict[str, Tensor]:
            out, at = {}, 0
            for k in keys:
                count = int(masks[k].sum())
                out[k] = torch.zeros_like(p[k]).masked_scatter(masks[k], z[at : at + count])
                at += count
            return out

        def objective(z: Tensor) -> Tensor:
            q = full(z)
            return self.train_loss(q) + lam * group_lasso([q[k] for k in PENALISED])

        z = torch.cat([p[k].detach()[masks[k]] for k in keys])
        for _ in range(steps):
            grad = torch.autograd.functional.jacobian(objective, z)
            if grad.norm() < 1e-13:
                break
            z = z - torch.linalg.solve(torch.autograd.functional.hessian(objective, z), grad)
        return {k: v.requires_grad_(True) for k, v in full(z.detach()).items()}

    def kkt(self, p: dict[str, Tensor], lam: float) -> tuple[float, float]:
        """(largest KKT residual of the active coordinates, smallest slack λ√n − ‖∇_g F‖ of a zero group)."""
        grads = dict(zip(p, torch.autograd.grad(self.train_loss(p), list(p.values()))))
        worst, slack = 0.0, math.inf
        for k, grad in grads.items():
            if k not in PENALISED:
                worst = max(worst, float(grad.abs().max()))
                continue
            norms, scale = group_norms(p[k].detach()), lam * group_size(p[k]) ** 0.5
            alive = norms > 0
            stationary = grad + scale * p[k].detach() / norms.clamp_min(1e-300).view(1, -1, 1, 1)
            worst = max(worst, float(group_norms(stationary)[alive].max()))
            if (~alive).any():
                slack = min(slack, float((scale - group_norms(grad)[~alive]).min()))
        return worst, slack

    def solve(self, p: dict[str, Tensor], lam: float, steps: int) -> dict[str, Tensor]:
        solution = self.newton(self.proximal_gradient(p, lam, steps), lam)
        worst, slack = self.kkt(solution, lam)
        assert worst < 1e-10 and slack > 1e-3, (worst, slack)  # a stationary point, strictly complementary
        return solution


def net_support(p: dict[str, Tensor]) -> list[list[bool]]:
    return [(group_norms(p[k].detach()) > 0).tolist() for k in PENALISED]


def test_network_hypergradient_matches_finite_differences():
    net, lam = Net(), 0.01
    solution = net.solve(net.start, lam, steps=2000)
    assert any(not alive for layer in net_support(solution) for alive in layer), "the test needs a zero group"
    params = list(solution.values())
    result = hypergradient(
        net.train_loss(solution),
        net.val_loss(solution),
        params,
        [solution[k] for k in PENALISED],
        lam,
        iterations=100,
        damping=1e-8,
        tol=1e-12,
    )
    h = 1e-3 * lam
    moved = [net.solve(solution, lam + sign * h, steps=150) for sign in (1, -1)]
    for other in moved:
        assert net_support(other) == net_support(solution), "the support changed inside [λ − h, λ + h]"
    numeric = float(net.val_loss(moved[0]).detach() - net.val_loss(moved[1]).detach()) / (2 * h)
    implicit = float(result.lam)
    error = abs(implicit - numeric) / abs(numeric)
    print(
        f"network: implicit {implicit:.8g} (residual {float(result.solve.residual):.1e}), FD {numeric:.8g}, "
        f"relative error {error:.1e}"
    )
    assert not bool(result.solve.negative_curvature)
    assert implicit * numeric > 0 and error < 1e-2


# --- λ learned on the convex problem ----------------------------------------------------------------------------


@functools.cache
def lambda_minimiser() -> float:
    """argmin_λ L_V(θ*(λ)) for one global λ on `regression`: bisection on the sign of the closed-form derivative
    (log scale)."""
    problem = regression()
    low, high = math.log(1e-3), math.log(1.0)
    x = None
    for _ in range(20):
        middle = 0.5 * (low + high)
        lam = math.exp(middle)
        x = solve(problem, (lam, lam), start=x, steps=400)
        if float(closed_form(problem, x, (lam, lam)).sum()) > 0:
            high = middle
        else:
            low = middle
    return math.exp(0.5 * (low + high))


@pytest.mark.parametrize("factor", [0.1, 10.0])
def test_lambda_updates_move_toward_the_validation_minimiser(factor):
    """Phases of (warm-started solve, implicit hypergradient, Adam step on ρ = log λ), as implicit-lambda runs them,
    starting 10× below and 10× above the λ that minimises L_V(θ*(λ))."""
    problem = regression()
    best = lambda_minimiser()
    rho = torch.tensor([math.log(factor * best)], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([rho], lr=0.3)
    x = None
    distances = [abs(float(rho.detach()) - math.log(best))]
    for _ in range(12):
        lam = float(rho.detach().exp())
        x = solve(problem, (lam, lam), start=x, steps=200)
        params = as_kernels(x)
        train, val = kernel_losses(problem, params)
        rho.grad = hypergradient(train, val, params, params[:2], rho.detach().exp(), iterations=60).rho
        optimizer.step()
        distances.append(abs(float(rho.detach()) - math.log(best)))
    print(f"start {factor}× the minimiser {best:.4g}: |log λ − log λ*| " + " ".join(f"{d:.2f}" for d in distances))
    assert all(later < earlier for earlier, later in zip(distances[:5], distances[1:6]))  # straight toward it
    assert distances[-1] < 0.25 * distances[0]


# --- the method ---------------------------------------------------------------------------------------------------


def _method(**options: object) -> tuple[ImplicitLambda, TrainContext]:
    ctx = random_nyu_context(steps=4, log_every=1)
    info = methods().get("implicit-lambda")
    method = info.method(dataclasses.replace(info.config(), **options))
    torch.manual_seed(0)
    method.setup(ctx)
    return method, ctx


def test_training_batches_come_from_the_meta_train_part_and_l_v_from_the_meta_validation_split():
    method, ctx = _method(phase_steps=2, hyper_batches=2, solver_iterations=2)
    fetched: list[tuple[object, list[tuple[int, ...]]]] = []
    original = ctx.fetch

    def spy(requests, tasks, ahead, position, stream):
        fetched.append((stream, [tuple(r) for r in requests]))
        return original(requests, tasks, ahead, position, stream)

    ctx.fetch = spy  # type: ignore[method-assign]
    for step in range(4):
        method.step(ctx, step)
    rest, meta_val = (set(pool.tolist()) for pool in meta_validation_split(len(ctx.train), 0.2, ctx.budget.batch_size))
    training = [r for stream, requests in fetched if stream == "implicit-train" for r in requests]
    hyper = [requests for stream, requests in fetched if stream == "implicit-hyper"]
    assert len(training) == 4 and all(set(r) <= rest for r in training)
    assert len(hyper) == 2 and all(len(requests) == 4 for requests in hyper)  # 2 training + 2 meta-val batches
    for requests in hyper:
        assert all(set(r) <= rest for r in requests[:2]) and all(set(r) <= meta_val for r in requests[2:])
    assert hyper[-1][:2] == training[-1:] + training[-2:-1]  # F on the training batches of the last steps


def test_a_lambda_update_reads_nothing_back(monkeypatch: pytest.MonkeyPatch):
    """A step with a hypergradient (CG without a tolerance) under the host-sync detector of test_host_syncs."""
    from test_host_syncs import HostSyncDetector

    monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device: False, raising=False)
    for solver in ("cg", "neumann"):
        method, ctx = _method(phase_steps=1, solver=solver, per_layer=solver == "neumann", solver_iterations=3)
        detector = HostSyncDetector()
        ctx.fetch = detector.exempt(ctx.fetch)  # type: ignore[method-assign]
        with detector:
            logged = method.step(ctx, 0)
        assert [str(e) for e in detector.events] == []
        assert "lambda_grad" in logged and "hyper_residual" in logged


@pytest.mark.e2e
def test_implicit_lambda_runs_end_to_end_and_records_lambda_and_its_hypergradient(nyu_mtan, tmp_path):
    request = RunRequest(
        method="implicit-lambda",
        data_root=nyu_mtan,
        budget="smoke",
        unseen=("depth",),
        overrides={"phase_steps": "1", "damping": "100", "solver_iterations": "5"},  # λ updated at every step
        out=tmp_path / "run",
        reference=False,
    )
    result = execute(request).result
    assert result.method.name == "implicit-lambda" and result.method.source == "builtin"
    assert all(entry.lambda_grad is not None and math.isfinite(entry.lambda_grad) for entry in result.history)
    assert result.history[-1].lambda_grad_positive is not None
    assert all("hyper_residual" in entry.extra for entry in result.history)
    assert result.lam.start == pytest.approx(1e-2) and result.lam.end != pytest.approx(1e-2, rel=1e-6)
    assert all(math.isfinite(m.value) for task in result.tasks.values() for m in task.metrics.values())
    assert (tmp_path / "run" / "lambda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_options_are_range_checked():
    info = methods().get("implicit-lambda")
    for key, value in (("phase_steps", "0"), ("rho_lr", "0"), ("damping", "-1"), ("meta_val_fraction", "1")):
        with pytest.raises(ConfigError):
            check_config(build_config(info.config, {key: value}))
