"""The hypergradient of a validation loss with respect to the group-lasso strength λ, by implicit differentiation.

Our implementation of the implicit-differentiation hypergradient for Lasso-type models (Bertrand et al. 2020,
arXiv 2002.08943: differentiate on the support only) with the Hessian-inverse-vector products of Lorraine, Vicol
& Duvenaud 2020 (arXiv 1911.02590: conjugate gradient or a truncated Neumann series of Hessian-vector products).

The training problem is ``min_θ F(θ) + Σ_l λ_l Ω_l(θ)`` with ``Ω_l = Σ_{g in layer l} √n_g ‖θ_g‖₂``, exactly
`mtbench.sparsity.group_lasso`'s Ω (groups by input or output channel, ``axis``). At a solution θ* the *active*
set A holds every group with θ_g ≠ 0 and every parameter that carries no penalty (heads, norms, biases); a zero
group stays zero under a small change of λ (strict complementarity, assumed) and is left out. On A the
optimality condition ``∇_A F + Σ_l λ_l ∇_A Ω_l = 0`` is smooth, and the implicit function theorem gives

    dθ_A/dλ_l = −H_A⁻¹ ∇_A Ω_l,   H_A = ∇²_AA F + Σ_l λ_l ∇²_AA Ω_l,
    ∇²‖θ_g‖₂ = (I − θ_g θ_gᵀ/‖θ_g‖²) / ‖θ_g‖₂   (times √n_g in Ω),

so ``dL_V/dλ_l = −⟨H_A⁻¹ ∇_A L_V, ∇_A Ω_l⟩`` (one linear solve for every λ_l). H_A⁻¹ v is found by conjugate
gradient (`conjugate_gradient`) or a truncated Neumann series (`neumann_series`) on the products H_A v: ∇²F v by
double backpropagation through F's gradient graph (built once per hypergradient), ∇²Ω v in closed form per layer
(`group_lasso_hvp`). ``damping`` δ solves with H_A + δI instead (a non-convex network's H_A may be indefinite).

The fixed points of `mtbench.sparsity.ProximalAdam` (either prox metric) are exactly the stationary points of the
penalised problem, so the formula applies to the weights it trains; with a mini-batch F it is an estimate.

Nothing here reads a device value on the host, except the optional tolerance test of the solvers (``tol``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtbench.sparsity import (
    Axis,
    _device_scalar,
    group_dims,
    group_lasso_grad,
    group_norms,
    group_shape,
    group_size,
    zero_group_masks,
)

Solver = Literal["cg", "neumann"]
MatVec = Callable[[Tensor], Tensor]


@dataclass
class SolveInfo:
    """How a linear solve went: the relative residual ‖A x − b‖/‖b‖ (a device tensor; 0 for b = 0), the
    iterations run, and (conjugate gradient) whether it stopped on a direction of non-positive curvature."""

    residual: Tensor
    iterations: int
    negative_curvature: Tensor | None = None


@dataclass
class Hypergradient:
    """dL_V/dλ at θ*, and what the solve reported.

    Attributes:
        lam: dL_V/dλ, shaped as the λ given (0-dim for one global λ given as a number).
        rho: dL_V/dρ for ρ = log λ, i.e. λ ⊙ ``lam``.
        per_layer: dL_V/dλ_l for every penalised layer, (L,), whatever λ's shape (a global λ's is their sum).
        solve: the linear solve's `SolveInfo`.
    """

    lam: Tensor
    rho: Tensor
    per_layer: Tensor
    solve: SolveInfo


def group_lasso_hvp(weights: Sequence[Tensor], vectors: Sequence[Tensor], axis: Axis = "in") -> list[Tensor]:
    """∇²Ω_l v_l for every layer l (without λ): √n_g/‖θ_g‖ (v_g − θ_g ⟨θ_g, v_g⟩/‖θ_g‖²), 0 on zero groups."""
    out = []
    shape = group_shape(axis)
    for weight, vector in zip(weights, vectors):
        weight = weight.detach()
        norms = group_norms(weight, axis)
        positive = norms > 0
        safe = torch.where(positive, norms, torch.ones_like(norms))
        dot = (weight * vector).sum(dim=group_dims(axis))
        scale = torch.where(positive, group_size(weight, axis) ** 0.5 / safe, torch.zeros_like(norms))
        out.append(scale.view(shape) * (vector - weight * (dot / safe.square()).view(shape)))
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a, b)


def conjugate_gradient(
    matvec: MatVec, b: Tensor, iterations: int, tol: float | None = None
) -> tuple[Tensor, SolveInfo]:
    """x ≈ A⁻¹ b for a symmetric A given by ``matvec``, by at most ``iterations`` CG iterations from x = 0.

    Without ``tol`` every iteration runs and nothing is read on the host; with it, the loop stops once
    ‖r‖ ≤ tol·‖b‖ (one host read per iteration). Safeguards for an A that is not positive definite (a network's
    Hessian), kept on the device: a direction p with pᵀAp ≤ 0 freezes x from then on (truncated CG), and the
    iterate returned is the one of least residual (x = 0 included), whose relative residual is reported. Where
    the very first direction, b itself, has non-positive curvature, x = b is returned (the steepest-descent
    fallback of truncated Newton-CG, Nocedal & Wright Alg. 7.1: the identity as the inverse, so a hypergradient
    keeps the direction of the one-step form instead of vanishing).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    b_norm2 = rr
    best, best_rr = x, rr
    alive = torch.ones((), dtype=torch.bool, device=b.device)
    fallback = torch.zeros((), dtype=torch.bool, device=b.device)
    fallback_rr = rr
    done = 0
    while done < iterations:
        done += 1
        ap = matvec(p)
        curvature = _dot(p, ap)
        if done == 1:  # p = b: x = b has the residual b − A b
            fallback = curvature <= 0
            fallback_rr = _dot(b - ap, b - ap)
        alive = alive & (curvature > 0)
        alpha = torch.where(alive, rr / torch.where(alive, curvature, torch.ones_like(curvature)), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = _dot(r, r)
        beta = torch.where(rr > 0, rr_next / torch.where(rr > 0, rr, torch.ones_like(rr)), 0.0)
        p = r + beta * p
        rr = rr_next
        better = rr < best_rr
        best, best_rr = torch.where(better, x, best), torch.where(better, rr, best_rr)
        if tol is not None and bool(rr <= tol**2 * b_norm2):
            break
    best, best_rr = torch.where(fallback, b, best), torch.where(fallback, fallback_rr, best_rr)
    return best, SolveInfo(_relative(best_rr.sqrt(), b_norm2.sqrt()), done, ~alive)


def _relative(norm: Tensor, reference: Tensor) -> Tensor:
    """``norm / reference``, 0 where the reference is 0."""
    return torch.where(reference > 0, norm / torch.where(reference > 0, reference, 1.0), 0.0)


def neumann_series(
    matvec: MatVec, b: Tensor, iterations: int, lr: float, tol: float | None = None
) -> tuple[Tensor, SolveInfo]:
    """x = η Σ_{k<K} (I − ηA)^k b ≈ A⁻¹ b (K = ``iterations`` products; converges for 0 < η < 2/‖A‖, A ≻ 0).

    The residual needs no extra product: A x − b = −(I − ηA)^K b, the next term. Where the series does not
    converge (η too large, A not positive definite) the partial sum of least residual is returned (x = 0
    included). ``tol`` as in `conjugate_gradient`.
    """
    term = b.clone()
    total = torch.zeros_like(b)
    b_norm = b.norm()
    best, best_norm = total, b_norm
    done = 0
    while done < iterations:
        done += 1
        total = total + term
        term = term - lr * matvec(term)
        norm = term.norm()
        better = norm < best_norm
        best, best_norm = torch.where(better, total, best), torch.where(better, norm, best_norm)
        if tol is not None and bool(norm <= tol * b_norm):
            break
    return lr * best, SolveInfo(_relative(best_norm, b_norm), done)


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    return [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in like]), like)]


def _given_lambda(lam: float | Tensor | Sequence[float], like: Tensor) -> Tensor:
    """λ as given (a 0-dim tensor for a number), detached, on ``like``'s device and dtype (no host copy of a
    number)."""
    if isinstance(lam, (list, tuple)):
        return torch.stack([_device_scalar(value, like) for value in lam])
    return _device_scalar(lam.detach() if isinstance(lam, Tensor) else lam, like)


def _layer_lambdas(given: Tensor, layers: int) -> Tensor:
    """λ_l per layer, (L,): one global λ repeated."""
    flat = given.reshape(-1)
    if flat.numel() == 1:
        return flat.expand(layers)
    if flat.numel() != layers:
        raise ValueError(f"λ has {flat.numel()} values for {layers} penalised layers (give one, or one per layer)")
    return flat


def hypergradient(
    train_loss: Tensor,
    val_loss: Tensor,
    params: Sequence[Tensor],
    penalised: Sequence[Tensor],
    lam: float | Tensor | Sequence[float],
    *,
    axis: Axis = "in",
    solver: Solver = "cg",
    iterations: int = 50,
    tol: float | None = None,
    damping: float = 0.0,
    neumann_lr: float = 1.0,
) -> Hypergradient:
    """dL_V/dλ at θ* = ``params`` (an approximate solution of min F + Σ_l λ_l Ω_l), restricted to the active set.

    Args:
        train_loss: F(θ), computed from ``params`` with its autograd graph (it is differentiated twice).
        val_loss: L_V(θ), computed from ``params`` with its graph (no penalty term).
        params: every parameter θ that F is minimised over; those F does not depend on are constants here.
        penalised: the weights carrying Ω, one per layer (a subset of ``params``, by identity), in λ's order.
        lam: λ, one number (global) or one per penalised layer (a number, a sequence or a tensor).
        axis: the group axis (`mtbench.sparsity.group_lasso`'s).
        solver: ``cg`` (`conjugate_gradient`) or ``neumann`` (`neumann_series`) for H_A⁻¹ ∇_A L_V.
        iterations: products H_A v at most.
        tol: stop at relative residual ``tol`` (a host read per iteration); None runs every iteration.
        damping: δ ≥ 0: solve with H_A + δI.
        neumann_lr: η of the Neumann series (needs η < 2/‖H_A + δI‖).

    Returns:
        the `Hypergradient` (device tensors, detached).
    """
    if not penalised:
        raise ValueError("no penalised weights: λ has no effect to differentiate")
    ids = {id(p) for p in params}
    if any(id(w) not in ids for w in penalised):
        raise ValueError("every penalised weight must be one of params (the same tensor)")
    grads = torch.autograd.grad(train_loss, list(params), create_graph=True, allow_unused=True)
    # parameters F does not depend on are not determined by the optimality condition: left out
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    variables = [p for p, _ in used]
    graph = [(i, g) for i, (_, g) in enumerate(used) if g.requires_grad]  # gradients that depend on θ
    position = {id(p): i for i, p in enumerate(variables)}
    layer_at = [position.get(id(w)) for w in penalised]
    like = variables[0] if variables else penalised[0]
    given = _given_lambda(lam, like)
    lams = _layer_lambdas(given, len(penalised))

    weights = [w.detach() for w in penalised]
    masks = [torch.ones_like(p) for p in variables]
    for w, at, mask in zip(weights, layer_at, zero_group_masks(weights, axis)):
        if at is not None:
            masks[at] = mask.expand_as(w).to(w.dtype)
    mask = _flat(masks)

    def matvec(v: Tensor) -> Tensor:
        v = v * mask
        pieces = _split(v, variables)
        out = [torch.zeros_like(p) for p in variables]
        if graph:
            products = torch.autograd.grad(
                [g for _, g in graph],
                variables,
                grad_outputs=[pieces[i] for i, _ in graph],
                retain_graph=True,
                allow_unused=True,
            )
            out = [q.detach() if q is not None else o for q, o in zip(products, out)]
        active_layers = [(l, at) for l, at in enumerate(layer_at) if at is not None]
        omega = group_lasso_hvp([weights[l] for l, _ in active_layers], [pieces[at] for _, at in active_layers], axis)
        for (l, at), h in zip(active_layers, omega):
            out[at] = out[at] + lams[l] * h
        result = _flat(out) * mask
        return result + damping * v if damping else result

    # retain_graph: F's gradient graph may share nodes with L_V's (one forward for both)
    val_grads = torch.autograd.grad(val_loss, variables, retain_graph=True, allow_unused=True) if variables else ()
    b = _flat([g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(val_grads, variables)]) * mask
    if solver == "cg":
        solution, info = conjugate_gradient(matvec, b, iterations, tol)
    elif solver == "neumann":
        solution, info = neumann_series(matvec, b, iterations, neumann_lr, tol)
    else:
        raise ValueError(f"unknown solver {solver!r} (cg or neumann)")
    pieces = _split(solution, variables)
    omega_grads = group_lasso_grad(weights, axis)  # zero on zero groups: ∇_A Ω_l
    per_layer = torch.stack(
        [
            -(pieces[at] * g).sum() if at is not None else torch.zeros((), dtype=like.dtype, device=like.device)
            for at, g in zip(layer_at, omega_grads)
        ]
    )
    lam_grad = per_layer.sum().reshape(given.shape) if given.numel() == 1 else per_layer.reshape(given.shape)
    return Hypergradient(lam_grad, given * lam_grad, per_layer, info)


__all__ = [
    "Hypergradient",
    "SolveInfo",
    "conjugate_gradient",
    "group_lasso_hvp",
    "hypergradient",
    "neumann_series",
]
