"""Gradient aggregators of the gradient-manipulation methods: pure functions on per-task gradients.

Every function takes ``G``, a ``(K, P)`` matrix with one row per task gradient (or ``M = G Gᵀ``,
its ``K × K`` Gram matrix, where only inner products matter), and returns either weights on the
probability simplex Δ = {w ≥ 0, Σ w = 1} or an aggregated ``(P,)`` gradient. The small simplex
problems are solved in float64 NumPy on the Gram matrix; the ``(P,)`` results keep ``G``'s dtype
and device.

Host round trip (by design): a solver on the host costs one read of the ``K × K`` Gram matrix per call
(`gram`, the one point where a CUDA step waits for the device) and one copy of the ``K`` weights back
(`to_device`: from pinned memory without waiting, on CUDA). PCGrad and the ``(P,)`` work stay on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor


def gram(G: Tensor) -> np.ndarray:
    """``M = G Gᵀ`` (K × K) in float64 NumPy: formed on ``G``'s device, then read back (K² numbers; on an
    accelerator this read waits for the device: the one host synchronisation of a host-side solve)."""
    G64 = G.detach().double()
    return (G64 @ G64.T).cpu().numpy()


def to_device(weights: np.ndarray, like: Tensor) -> Tensor:
    """The host ``weights`` as a tensor of ``like``'s dtype on its device (the solvers' way back).

    The same numbers as ``torch.as_tensor(weights, dtype=…, device=…)`` (the cast to the dtype is made on the
    host either way). On CUDA the copy goes from pinned memory with ``non_blocking=True``: a plain copy from
    pageable memory would wait for the device again; this one is queued behind the work already there.
    """
    if like.device.type != "cuda":
        return torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    host = torch.from_numpy(np.ascontiguousarray(weights)).to(like.dtype)
    return host.pin_memory().to(like.device, non_blocking=True)


# --- minimum-norm point of the convex hull (MGDA) ------------------------------------------------------


def min_norm_two(M: np.ndarray) -> np.ndarray:
    """Exact min-norm weights for two tasks: argmin_γ ‖γ g₁ + (1−γ) g₂‖², γ ∈ [0, 1].

    Setting the derivative to zero gives γ = (M₂₂ − M₁₂) / (M₁₁ + M₂₂ − 2 M₁₂), clipped to [0, 1];
    identical gradients (zero denominator) give γ = ½.
    """
    denominator = M[0, 0] + M[1, 1] - 2.0 * M[0, 1]
    gamma = 0.5 if denominator <= 1e-30 else float(np.clip((M[1, 1] - M[0, 1]) / denominator, 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def frank_wolfe_min_norm(M: np.ndarray, max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """Min-norm point of conv{g_k}: Frank–Wolfe with exact line search (Sener & Koltun, Alg. 2) plus away steps.

    ``f(w) = wᵀMw`` has gradient ``2Mw``. From the centre of the simplex, each iteration either moves
    towards the vertex ``e_t`` with the smallest ``(Mw)_t`` (the paper's step) or, when that gains
    less, away from the vertex ``e_s`` of the current support with the largest ``(Mw)_s``; the step
    length is the exact minimiser of the quadratic along the direction, capped to stay on the
    simplex. The away steps (Lacoste-Julien & Jaggi 2015) let weights reach exactly 0 and make the
    convergence linear instead of O(1/t). Stops when the Frank–Wolfe gap ``wᵀMw − min_t (Mw)_t``
    falls below ``tol`` times the mean squared gradient norm.
    """
    K = M.shape[0]
    scale = max(float(np.trace(M)) / K, 1e-300)
    w = np.full(K, 1.0 / K)
    for _ in range(max_iter):
        grad = M @ w
        value = float(w @ grad)
        t = int(np.argmin(grad))
        support = np.flatnonzero(w > 0)
        s = int(support[np.argmax(grad[support])])
        gap_towards, gap_away = value - float(grad[t]), float(grad[s]) - value
        if gap_towards <= tol * scale:
            break
        away = gap_away > gap_towards
        if away:
            direction, longest = w.copy(), w[s] / (1.0 - w[s])
            direction[s] -= 1.0
        else:
            direction, longest = -w, 1.0
            direction[t] += 1.0
        curvature = float(direction @ M @ direction)
        step = longest if curvature <= 0 else float(np.clip(-(grad @ direction) / curvature, 0.0, longest))
        w = w + step * direction
        if away and step == longest:
            w[s] = 0.0  # the away vertex leaves the support
        w = np.clip(w, 0.0, None)
        w /= w.sum()
    return w


def min_norm_weights(G: Tensor, max_iter: int = 1000) -> Tensor:
    """Weights ``w ∈ Δ`` of the minimum-norm point ``Gᵀw`` of the convex hull of the rows of ``G``.

    Closed form for two tasks, `frank_wolfe_min_norm` otherwise. Solved on the host, by design: one read of
    the Gram matrix (`gram`) and one non-blocking copy of the K weights back (`to_device`) per call.
    """
    M = gram(G)
    w = min_norm_two(M) if M.shape[0] == 2 else frank_wolfe_min_norm(M, max_iter)
    return to_device(w, G)


# --- PCGrad --------------------------------------------------------------------------------------------


def pcgrad(G: Tensor, rng: np.random.Generator) -> Tensor:
    """Projecting conflicting gradients (Yu et al. 2020), summed.

    For every task ``i``, walk the other tasks in a random order (from ``rng``); whenever the
    running ``g_i`` conflicts with the original ``g_j`` (``g_i·g_j < 0``), remove its component
    along ``g_j``: ``g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j``. Return ``Σ_i g_i``.

    Branch-free: the coefficient is ``torch.where(g_i·g_j < 0, g_i·g_j / ‖g_j‖², 0)``, so the test stays on
    the device (no host sync per pair). A projected step computes exactly the former expression; a kept
    one subtracts ``0·g_j``, which leaves ``g_i`` unchanged, so the result is the same float for float.
    """
    K = G.shape[0]
    squared_norms = [torch.dot(G[j], G[j]) for j in range(K)]
    projected = []
    for i in range(K):
        g = G[i].clone()
        for j in rng.permutation(K).tolist():
            if j == i:
                continue
            dot = torch.dot(g, G[j])
            coefficient = torch.where(dot < 0, dot / squared_norms[j], torch.zeros_like(dot))
            g = g - coefficient * G[j]
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


# --- CAGrad --------------------------------------------------------------------------------------------


def cagrad_objective(w: np.ndarray, M: np.ndarray, c: float) -> float:
    """``wᵀ G g₀ + c ‖g₀‖ ‖Gᵀw‖`` with ``g₀ = Gᵀ1/K``, written with the Gram matrix only."""
    K = M.shape[0]
    g0_norm = np.sqrt(max(M.sum() / K**2, 0.0))
    return float(w @ M @ np.full(K, 1.0 / K) + c * g0_norm * np.sqrt(max(w @ M @ w, 0.0)))


def cagrad_weights(M: np.ndarray, c: float) -> np.ndarray:
    """argmin over the simplex of `cagrad_objective` (SLSQP on K variables, started at the centre).

    The objective is positively homogeneous in ``M``, so ``M`` is first scaled to unit mean diagonal
    (same minimiser, better-conditioned tolerances).
    """
    K = M.shape[0]
    M = M / max(float(np.trace(M)) / K, 1e-300)
    mean_row = M @ np.full(K, 1.0 / K)
    g0_norm = np.sqrt(max(M.sum() / K**2, 0.0))

    def objective(w: np.ndarray) -> float:
        return float(w @ mean_row + c * g0_norm * np.sqrt(w @ M @ w + 1e-12))

    def jacobian(w: np.ndarray) -> np.ndarray:
        return mean_row + c * g0_norm * (M @ w) / np.sqrt(w @ M @ w + 1e-12)

    start = np.full(K, 1.0 / K)
    result = minimize(
        objective,
        start,
        jac=jacobian,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * K,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum() if w.sum() > 0 else start
    return w if objective(w) <= objective(start) else start


def cagrad(G: Tensor, c: float = 0.5, rescale: bool = True) -> tuple[Tensor, Tensor]:
    """Conflict-averse gradient (Liu et al. 2021); returns ``(d, w)``.

    ``g₀ = mean_k g_k``; ``w = argmin_{w∈Δ} wᵀG g₀ + c‖g₀‖‖g_w‖`` with ``g_w = Gᵀw``;
    ``d = g₀ + (c‖g₀‖ / ‖g_w‖) g_w``, divided by ``1 + c²`` when ``rescale``. ``c = 0`` gives ``g₀``.

    ``w`` is solved on the host, by design (SLSQP): one read of the Gram matrix (`gram`) and one non-blocking
    copy of w back (`to_device`) per call; ``c = 0`` reads nothing.
    """
    K = G.shape[0]
    g0 = G.mean(dim=0)
    if c == 0:
        return g0, torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
    w = to_device(cagrad_weights(gram(G), c), G)
    gw = w @ G
    d = g0 + c * g0.norm() / (gw.norm() + 1e-12) * gw
    return (d / (1.0 + c**2) if rescale else d), w


__all__ = [
    "cagrad",
    "cagrad_objective",
    "cagrad_weights",
    "frank_wolfe_min_norm",
    "gram",
    "min_norm_two",
    "min_norm_weights",
    "pcgrad",
    "to_device",
]
