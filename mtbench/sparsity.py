"""Structured (channel-group) sparsity of the shared backbone: groups, penalty, prox step, statistics.

Only the convolution kernels of the shared backbone are sparsified (not heads, norms or biases).
A kernel ``W`` of shape ``C_out × C_in × k × k`` has one group per input channel ``c`` (the axis of
the authors' code): ``W_g = W[:, c]`` of size ``n_g = C_out·k²``; ``axis="out"`` groups by output
channel instead. The penalty is ``Ω = Σ_layers Σ_g √n_g ‖W_g‖₂`` and the proximal step after an
optimizer step with learning rate ``η`` is block soft-thresholding:
``W_g ← max(0, 1 − η·λ·√n_g / ‖W_g‖₂) · W_g`` (plain block soft-thresholding).

The default for every sparse method is the authors' optimizer instead (`ProximalAdam`, after Deleu &
Bengio 2021, arXiv 2102.03869): the Adam step, then the same prox in the metric of Adam's
denominator ``D = √v̂ + ε``, i.e. ``argmin_x ½‖x − v‖²_D + τ_g‖x‖₂`` with ``τ_g = η·λ·√n_g``. A group is
zeroed iff ``‖D_g ⊙ v_g‖₂ ≤ τ_g``; otherwise ``x_i = D_i v_i r / (D_i r + τ_g)`` where ``r = ‖x‖₂`` is the
root of ``Σ_i (D_i v_i)² / (D_i r + τ_g)² = 1`` (decreasing and convex in r, bracketed by ``[0, ‖v‖₂]``;
solved by safeguarded Newton). With D = 1 this is plain block soft-thresholding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

Axis = Literal["in", "out"]
ProxKind = Literal["adam", "plain"]


def host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value on the host costs nothing on ``device`` (the CPU: no device to wait for).

    A training step on an accelerator never reads a tensor's value on the host (``float(t)``, ``.item()``,
    ``bool(t)``, ``.cpu()``): each read waits for every kernel queued before it. Where a read is free, the few
    places that can use one to save work (an early exit) or to keep a host computation bit for bit as it was
    (`mtbench_baselines.dwa`) do so; elsewhere they take their device-side form. The tests patch this function
    to run the device-side forms on the CPU (``tests/test_host_syncs.py``).
    """
    return device.type == "cpu"


def _device_scalar(value: Tensor | float, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a 0-dim (or unchanged-shape) tensor of ``dtype`` (default ``like``'s) on ``like``'s device.

    The same number as ``torch.as_tensor(value, dtype=…, device=…)``, without its host→device copy for a Python
    number (``torch.full`` writes it on the device; a copy of host data into device memory waits for the device).
    """
    dtype = like.dtype if dtype is None else dtype
    if isinstance(value, Tensor):
        return value.to(dtype=dtype, device=like.device)
    if isinstance(value, (int, float)):
        return torch.full((), value, dtype=dtype, device=like.device)
    return torch.as_tensor(value, dtype=dtype, device=like.device)  # host data (a NumPy array …): copied over


def shared_conv_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every conv kernel of ``model.backbone`` (the shared, sparsified part)."""
    backbone = model.backbone if hasattr(model, "backbone") else model
    return [
        (name, module.weight)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Conv2d) and module.weight.dim() == 4
    ]


def group_dims(axis: Axis) -> tuple[int, ...]:
    """The kernel dimensions a group spans (summed over for one value per group)."""
    return (0, 2, 3) if axis == "in" else (1, 2, 3)


def group_shape(axis: Axis) -> tuple[int, ...]:
    """The shape that broadcasts one value per group over a ``C_out × C_in × k × k`` kernel."""
    return (1, -1, 1, 1) if axis == "in" else (-1, 1, 1, 1)


def group_size(weight: Tensor, axis: Axis = "in") -> int:
    """``n_g``: elements per group."""
    out_channels, in_channels, kh, kw = weight.shape
    return (out_channels if axis == "in" else in_channels) * kh * kw


def group_norms(weight: Tensor, axis: Axis = "in") -> Tensor:
    """‖W_g‖₂ for every group (length C_in for ``axis="in"``)."""
    return weight.pow(2).sum(dim=group_dims(axis)).sqrt()


def group_lasso(weights: Sequence[Tensor], axis: Axis = "in", eps: float = 0.0) -> Tensor:
    """Ω = Σ_layers Σ_g √n_g ‖W_g‖₂ (differentiable; ``eps`` smooths the norm at zero if > 0)."""
    total = weights[0].new_zeros(())
    for weight in weights:
        squared = weight.pow(2).sum(dim=group_dims(axis))
        norms = (squared + eps).sqrt() if eps else _safe_sqrt(squared)
        total = total + group_size(weight, axis) ** 0.5 * norms.sum()
    return total


def _safe_sqrt(squared: Tensor) -> Tensor:
    """√x with derivative 0 (not ∞·0 = NaN) at x = 0, to every order: a zero group's subgradient of Ω is 0.

    Without it, second-order meta-gradients (autograd through ∇Ω under ``create_graph``) turn every
    parameter into NaN as soon as the prox has zeroed one group.
    """
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, torch.ones_like(squared)).sqrt(), squared * 0)


def group_lasso_grad(weights: Sequence[Tensor], axis: Axis = "in") -> list[Tensor]:
    """∇Ω, in closed form: √n_g · W_g / ‖W_g‖₂ (0 for a zero group, the minimum-norm subgradient)."""
    grads = []
    for weight in weights:
        norms = group_norms(weight, axis)
        scale = torch.where(
            norms > 0, group_size(weight, axis) ** 0.5 / norms.clamp_min(1e-30), torch.zeros_like(norms)
        )
        grads.append(weight * scale.view(group_shape(axis)))
    return grads


def group_soft_threshold(weight: Tensor, tau: Tensor | float, axis: Axis = "in") -> Tensor:
    """Differentiable block soft-thresholding ``max(0, 1 − τ√n_g/‖W_g‖) W_g`` (out of place; 0 stays 0).

    Used inside the meta-graph (meta-sparsity's proximal inner step), so λ gets a gradient through it.
    """
    norms = _safe_sqrt(weight.pow(2).sum(dim=group_dims(axis)))
    positive = norms > 0
    safe = torch.where(positive, norms, torch.ones_like(norms))
    scale = torch.where(positive, (1.0 - tau * group_size(weight, axis) ** 0.5 / safe).clamp_min(0.0), norms * 0)
    return weight * scale.view(group_shape(axis))


def _grouped(tensor: Tensor, axis: Axis) -> Tensor:
    """View ``tensor`` (C_out × C_in × k × k) as one row per group: (groups, n_g)."""
    return (tensor.transpose(0, 1) if axis == "in" else tensor).reshape(tensor.shape[1 if axis == "in" else 0], -1)


def _ungrouped(rows: Tensor, like: Tensor, axis: Axis) -> Tensor:
    if axis == "in":
        return rows.reshape(like.shape[1], like.shape[0], *like.shape[2:]).transpose(0, 1)
    return rows.reshape(like.shape)


class _Rows:
    """The groups of a prox problem: the rows of a dense (G, n) matrix (one layer), or ragged rows laid end to end in
    one flat vector, ``lengths[g]`` elements each (every layer at once, `prox_group_lasso_` on an accelerator).
    Row-wise sums and norms, and one value per row spread over the row's elements."""

    def __init__(self, lengths: Tensor | None = None, size: int = 0) -> None:
        self.lengths, self.size = lengths, size

    def sum(self, x: Tensor) -> Tensor:
        if self.lengths is None:
            return x.sum(dim=1)
        return torch.segment_reduce(x, "sum", lengths=self.lengths, unsafe=True)  # unsafe: no host check of lengths

    def norm(self, x: Tensor) -> Tensor:
        return x.norm(dim=1) if self.lengths is None else self.sum(x * x).sqrt()

    def spread(self, per_row: Tensor) -> Tensor:
        if self.lengths is None:
            return per_row[:, None]
        return torch.repeat_interleave(per_row, self.lengths, output_size=self.size)  # output_size: no host read


def weighted_group_prox(
    values: Tensor, weights: Tensor, tau: Tensor, iterations: int = 60, *, lengths: Tensor | None = None
) -> Tensor:
    """Row-wise ``argmin_x ½ Σ_i d_i (x_i − v_i)² + τ ‖x‖₂`` for rows ``v`` (groups), ``d > 0``, ``τ ≥ 0``.

    Args:
        values: (G, n) the point v of each group; with ``lengths``, the G rows laid end to end, flat (N,).
        weights: the metric d (Adam's denominator), strictly positive, shaped as ``values``.
        tau: (G,) or scalar thresholds τ_g.
        iterations: cap on the safeguarded Newton iterations (float64; converges in a few).
        lengths: (G,) the length of each flat row (rows of different lengths: many layers in one call).

    Returns:
        the minimisers, shaped as ``values``, exactly zero for the groups with ‖d ⊙ v‖₂ ≤ τ.

    The iteration stops at the first one after which every kept row has converged (or after ``iterations``).
    That test is a value on the device: where reading it is free (`host_reads_are_free`, the CPU) the loop exits
    there; elsewhere it runs all ``iterations`` without reading it, and a stop flag kept on the device freezes the
    radii from the stopping iteration on. Both give the same radii bit for bit (the extra iterations change
    nothing), so a CUDA prox never waits for the device and a CPU prox does no extra work.
    """
    v, d = values.double(), weights.double()
    rows = _Rows(lengths, v.numel())
    count = v.shape[0] if lengths is None else lengths.numel()
    tau = _device_scalar(tau, v, torch.float64).expand(count)
    dv = d * v
    dv_norm = rows.norm(dv)
    keep = dv_norm > tau
    low = torch.zeros_like(dv_norm)
    high = rows.norm(v)
    zeros = torch.zeros_like(high)
    radius = torch.where(keep, 0.5 * high, zeros)
    t = rows.spread(tau)
    dv2 = dv.square()  # loop invariants, computed as the expressions below computed them every iteration
    dv2_d = dv2 * d
    dropped = ~keep
    early_exit = host_reads_are_free(v.device)
    stopped = torch.zeros((), dtype=torch.bool, device=v.device)
    for _ in range(iterations):
        denom = d * rows.spread(radius) + t
        residual = rows.sum(dv2 / denom.square()) - 1.0  # g(r), decreasing in r
        slope = -2.0 * rows.sum(dv2_d / denom.pow(3))  # g'(r) < 0
        low = torch.where(residual > 0, radius, low)
        high = torch.where(residual <= 0, radius, high)
        newton = radius - residual / slope.clamp_max(-1e-300)
        inside = (newton > low) & (newton < high)
        step = torch.where(inside, newton, 0.5 * (low + high))
        converged = (step - radius).abs() <= 1e-13 * radius.clamp_min(1e-300)
        # every kept row converged (True when no row is kept): the former exit test, as a device value
        done = (converged | dropped).all()
        radius = torch.where(stopped, radius, torch.where(keep, step, zeros))
        stopped = stopped | done
        if early_exit and bool(stopped):  # a CPU tensor: no device to wait for
            break
    spread_radius = rows.spread(radius)
    shrunk = dv * spread_radius / (d * spread_radius + t)
    return torch.where(rows.spread(keep), shrunk, torch.zeros_like(shrunk)).to(values.dtype)


def _weighted_prox_all_layers_(
    weights: Sequence[Tensor],
    taus: Sequence[Tensor],
    axis: Axis,
    denominators: Sequence[Tensor],
    skip_nonpositive: bool,
) -> None:
    """In place: `weighted_group_prox` of every layer's groups in one call (ragged rows laid end to end).

    Per layer, the Newton loop launches a few dozen operations (kernels) per iteration, and an accelerator runs
    all 60 iterations (no host read decides to stop): for the paper network's 55 shared convs that is 114,383
    operations per step, and 3,237 in this form (both counted on the CPU). The floats differ from the per-layer
    form's in the last bits (another summation order); on the CPU, where the per-layer loop stops early, that
    form is kept.
    """
    rows = [_grouped(weight, axis) for weight in weights]
    flat_values = torch.cat([r.reshape(-1) for r in rows])
    flat_metric = torch.cat([_grouped(d, axis).reshape(-1) for d in denominators])
    device = flat_values.device
    lengths = torch.cat([torch.full((r.shape[0],), r.shape[1], dtype=torch.int64, device=device) for r in rows])
    tau = torch.cat([t.to(torch.float64).expand(r.shape[0]) for t, r in zip(taus, rows)])
    out = weighted_group_prox(flat_values, flat_metric, tau, lengths=lengths)
    if skip_nonpositive:
        out = torch.where(_Rows(lengths, out.numel()).spread(tau > 0), out, flat_values)
    for weight, row, piece in zip(weights, rows, out.split([r.numel() for r in rows])):
        weight.copy_(_ungrouped(piece.view(row.shape), weight, axis))


@torch.no_grad()
def prox_group_lasso_(
    weights: Sequence[Tensor],
    threshold: float | Tensor | Sequence[float | Tensor],
    axis: Axis = "in",
    denominators: Sequence[Tensor] | None = None,
    skip_nonpositive: bool = False,
) -> None:
    """In place: the group-lasso prox with threshold τ_g = threshold·√n_g (threshold = η·λ; one per layer allowed).

    Without ``denominators``: plain block soft-thresholding ``W_g ← max(0, 1 − τ_g/‖W_g‖) W_g``. With them
    (one tensor per weight, Adam's ``√v̂ + ε``): the prox in that metric (`weighted_group_prox`).

    A threshold may be a tensor on the weights' device (meta-sparsity's λ): nothing is read back to the host.
    With ``skip_nonpositive``, a weight whose threshold is ≤ 0 is left exactly as it is (selected on the device
    for a tensor threshold; `ProximalAdam` skips such a layer).
    """
    thresholds = threshold if isinstance(threshold, (list, tuple)) else [threshold] * len(weights)
    shape = group_shape(axis)
    taus = [_device_scalar(tau, weight) * group_size(weight, axis) ** 0.5 for weight, tau in zip(weights, thresholds)]
    if (
        denominators is not None
        and len(weights) > 1
        and not host_reads_are_free(weights[0].device)
        and weights[0].device.type in ("cuda", "cpu")  # where segment_reduce exists (the CPU: in tests)
        and len({(w.dtype, w.device) for w in weights}) == 1
    ):
        _weighted_prox_all_layers_(weights, taus, axis, denominators, skip_nonpositive)
        return
    for index, (weight, tau) in enumerate(zip(weights, taus)):
        if denominators is None:
            norms = group_norms(weight, axis)
            scale = (1.0 - tau / norms.clamp_min(1e-30)).clamp_min(0.0)
            if skip_nonpositive:
                scale = torch.where(tau > 0, scale, 1.0)  # W·1 = W exactly
            weight.mul_(scale.view(shape))
            continue
        grouped = _grouped(weight, axis)
        rows = weighted_group_prox(grouped, _grouped(denominators[index], axis), tau)
        if skip_nonpositive:
            rows = torch.where(tau > 0, rows, grouped)
        weight.copy_(_ungrouped(rows, weight, axis))


@dataclass
class ProxOptions:
    """How a sparse method's proximal step is taken (a mixin of the sparse methods' config dataclasses).

    Attributes:
        axis: group axis, ``in`` (input channels, the authors') or ``out``.
        prox: ``adam``: the prox in the metric of Adam's denominator (the authors' optimizer, default);
            ``plain``: Euclidean block soft-thresholding after the Adam step.
        bias_correction: the metric uses Adam's bias-corrected √v̂ (default) or the raw √v (the authors').
    """

    axis: Axis = "in"
    prox: ProxKind = "adam"
    bias_correction: bool = True


def sparse_param_groups(
    model: nn.Module, lr: float, lam: Any, axis: Axis = "in", others: Sequence[Tensor] | None = None
) -> list[dict[str, Any]]:
    """`ProximalAdam` parameter groups: the shared conv kernels (penalised, λ = ``lam``) and the rest.

    ``others`` defaults to every other parameter of ``model``; pass it to add method-owned parameters.
    """
    shared = [w for _, w in shared_conv_weights(model)]
    ids = {id(w) for w in shared}
    rest = [p for p in (others if others is not None else model.parameters()) if id(p) not in ids]
    return [
        {"params": rest, "lr": lr},
        {"params": shared, "lr": lr, "group_lasso": True, "lam": lam, "axis": axis},
    ]


class ProximalAdam(torch.optim.Adam):
    """Adam(W) followed by the group-lasso prox on the parameter groups that carry ``group_lasso``.

    The authors' sparse optimizer (Deleu & Bengio 2021): after torch's own Adam step, every parameter of
    a group with ``group_lasso=True`` gets the prox with threshold ``lr·λ·√n_g`` in the metric of Adam's
    denominator ``D = √v̂ + ε`` (``prox="adam"``) or in the Euclidean one (``prox="plain"``).

    ``λ`` is read from the group's ``lam`` entry: a float, or a callable returning one value per
    parameter of the group (meta-sparsity's λ = exp(ρ) changes every step; its values are 0-dim tensors on
    the parameters' device, which the prox uses there: the threshold ``lr·λ`` is formed in float64 on the
    device, the same double as ``lr * float(λ)``, and a layer with ``λ ≤ 0`` is left unchanged by a
    selection on the device instead of a host-side test). We use the *bias-corrected*
    ``v̂ = v/(1 − β₂ᵗ)``: without the correction, ``√v ≈ √(1−β₂)·|g| ≈ 0.03·|g|`` at the first step, the
    metric is ~30× too small and the prox zeroes groups on no evidence (38 % of them at step 1 in our
    measurements); ``bias_correction=False`` gives the authors' uncorrected form.

    Args:
        params: parameter groups as for `torch.optim.Adam`; sparsified groups add ``group_lasso=True``,
            ``lam`` and optionally ``axis`` (``in``/``out``).
        prox: ``adam`` (preconditioned, default) or ``plain`` (block soft-thresholding).
        bias_correction: use √v̂ (True) or √v (False) in the metric.
        **adam: the remaining `torch.optim.Adam` options (lr, betas, eps, weight_decay,
            decoupled_weight_decay, foreach, fused…).

    Nothing in `step` reads a device value on the host: the bias correction's step count ``t`` is kept as a
    Python int beside Adam's own ``state["step"]`` (a device tensor under ``fused``/``capturable``), in
    ``state["host_step"]``, counted as torch counts it (every step in which the parameter has a gradient).
    """

    #: The per-parameter state key of the host copy of Adam's step count.
    HOST_STEP = "host_step"

    def __init__(
        self, params: Iterable[Any], *, prox: ProxKind = "adam", bias_correction: bool = True, **adam: Any
    ) -> None:
        super().__init__(params, **adam)
        self.prox_kind: ProxKind = prox
        self.bias_correction = bias_correction

    def denominator(self, param: Tensor, group: dict[str, Any]) -> Tensor:
        """Adam's ``√v̂ + ε`` for ``param`` (after at least one step)."""
        state = self.state[param]
        count = state.get(self.HOST_STEP)
        # only a state that never went through this class's `step` lacks the host count: read Adam's then
        step = float(count if count is not None else state["step"])
        beta2 = group["betas"][1]
        v = state["exp_avg_sq"]
        if self.bias_correction:
            v = v / (1.0 - beta2**step)
        return v.sqrt().add_(group["eps"])

    @torch.no_grad()
    def step(self, closure: Any = None, *, prox: bool = True) -> Any:  # type: ignore[override]
        """Adam's step, then `apply_prox` (``prox=False`` leaves the prox to the caller, who calls
        `apply_prox` itself, e.g. after reading the pre-prox iterate)."""
        fresh = {id(p) for group in self.param_groups for p in group["params"] if not self.state.get(p)}
        loss = super().step(closure)
        self._count_steps(fresh)
        if prox:
            self.apply_prox()
        return loss

    def _count_steps(self, fresh: set[int]) -> None:
        """Advance ``state["host_step"]`` of every parameter Adam just stepped (those with a gradient, as torch
        counts); ``fresh``: the ids of the parameters that had no state before this step (their count is 1)."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                count = state.get(self.HOST_STEP)
                if count is not None:
                    state[self.HOST_STEP] = count + 1
                elif id(param) in fresh:
                    state[self.HOST_STEP] = 1
                else:  # a state loaded without the key (a plain Adam's, an older checkpoint's): read it once
                    state[self.HOST_STEP] = int(state["step"])

    @torch.no_grad()
    def apply_prox(self) -> None:
        """The group-lasso prox on every ``group_lasso`` group: the one place the prox of training is taken."""
        for group in self.param_groups:
            if not group.get("group_lasso"):
                continue
            lam = group["lam"]
            lams = lam() if callable(lam) else [lam] * len(group["params"])
            axis = group.get("axis", "in")
            # the layers of one call: λ a device tensor (λ ≤ 0 selected away on the device) or a Python number
            layers: dict[bool, list[tuple[Tensor, float | Tensor]]] = {False: [], True: []}
            for param, layer_lam in zip(group["params"], lams):
                if param not in self.state or "exp_avg_sq" not in self.state[param]:
                    continue  # never stepped (no gradient yet)
                if isinstance(layer_lam, Tensor):
                    threshold: float | Tensor = _device_threshold(group["lr"], layer_lam.detach(), param)
                else:
                    threshold = group["lr"] * float(layer_lam)
                    if threshold <= 0:
                        continue
                layers[isinstance(threshold, Tensor)].append((param, threshold))
            for on_device, chosen in layers.items():
                if not chosen:
                    continue
                params = [param for param, _ in chosen]
                metrics = [self.denominator(param, group) for param in params] if self.prox_kind == "adam" else None
                prox_group_lasso_(params, [t for _, t in chosen], axis, metrics, skip_nonpositive=on_device)


def _device_threshold(lr: float, lam: Tensor, param: Tensor) -> Tensor:
    """``lr·λ`` as a 0-dim tensor on ``param``'s device: float64, the same double as ``lr * float(λ)``.

    (MPS has no float64: there the product is formed in float32.)
    """
    lam = lam.to(param.device)
    if lam.device.type == "mps":
        return lam.float().reshape(()) * lr
    return lam.double().reshape(()) * lr


def zero_group_masks(weights: Sequence[Tensor], axis: Axis = "in") -> list[Tensor]:
    """Boolean masks (broadcastable to each weight) that are False on exactly-zero groups."""
    shape = group_shape(axis)
    return [(group_norms(w, axis) > 0).view(shape) for w in weights]


def lowest_norm_masks(weights: Sequence[Tensor], sparsity: float, axis: Axis = "in", scope: str = "global") -> list[Tensor]:
    """Masks that remove the lowest-norm groups: ``round(sparsity · groups)`` of them (a pruning control).

    ``scope="global"`` ranks every group by its norm relative to the mean group norm of its layer (a
    BatchNorm after each conv makes absolute norms incomparable across layers) and keeps at least one
    group per layer; ``scope="layer"`` removes the same fraction from every layer. Ties break by position.

    Computed on the weights' device without reading a value back (prune calls it inside a training step):
    the global greedy walk (take groups in ascending relative norm, skip one whose layer is down to its
    last group, stop at the target) removes exactly the first ``target`` groups, in that order, whose rank
    within their own layer is below the layer's size − 1, which cumulative sums find.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    shape = group_shape(axis)
    norms = [group_norms(w, axis).detach() for w in weights]
    if scope == "layer":
        keep = [torch.ones_like(n, dtype=torch.bool) for n in norms]
        for n, k in zip(norms, keep):
            count = min(round(sparsity * n.numel()), n.numel() - 1)
            k[torch.argsort(n, stable=True)[:count]] = False
        return [k.view(shape) for k in keep]
    relative = torch.cat([n / n.mean().clamp_min(1e-30) for n in norms])
    layer_of = torch.cat([torch.full_like(n, i, dtype=torch.long) for i, n in enumerate(norms)])
    removable = torch.cat([torch.full_like(n, n.numel() - 1, dtype=torch.long) for n in norms])  # per group
    target = round(sparsity * relative.numel())
    order = torch.argsort(relative, stable=True)
    layers = layer_of[order]
    # rank of each group (in ascending order) among the groups of its own layer: 0, 1, … per layer
    # (not F.one_hot: on the CPU it checks the class range with a host read)
    seen = (layers[:, None] == torch.arange(len(norms), device=layers.device)).long().cumsum(dim=0)
    rank = seen.gather(1, layers[:, None]).squeeze(1) - 1
    eligible = rank < removable[order]
    removed = eligible & (eligible.cumsum(dim=0) <= target)
    kept = torch.empty_like(removed).scatter_(0, order, ~removed)  # back to the groups' own order
    return [k.clone().view(shape) for k in kept.split([n.numel() for n in norms])]


@dataclass
class LayerSparsity:
    name: str
    groups: int
    zero_groups: int
    params: int
    zero_params: int


@dataclass
class SparsityStats:
    """Group and parameter sparsity of the shared conv kernels, per layer and in total."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def group_sparsity(self) -> float:
        groups = sum(layer.groups for layer in self.layers)
        return sum(layer.zero_groups for layer in self.layers) / groups if groups else 0.0

    @property
    def param_sparsity(self) -> float:
        params = sum(layer.params for layer in self.layers)
        return sum(layer.zero_params for layer in self.layers) / params if params else 0.0

    @property
    def dead_layers(self) -> list[str]:
        """Shared convs whose every group is zero (the layer passes nothing on)."""
        return [layer.name for layer in self.layers if layer.groups and layer.zero_groups == layer.groups]

    @property
    def dead_branches(self) -> list[str]:
        """Residual blocks whose branch is switched off by a dead conv (``conv1``/``conv2`` of the block): the
        block passes its shortcut plus a constant, whatever its input."""
        branches = []
        for name in self.dead_layers:
            block, _, conv = name.rpartition(".")
            if conv in ("conv1", "conv2") and block not in branches:
                branches.append(block)
        return branches

    def to_dict(self) -> dict:
        return {
            "group_sparsity": self.group_sparsity,
            "param_sparsity": self.param_sparsity,
            "layers": [vars(layer) for layer in self.layers],
            "dead_layers": self.dead_layers,
            "dead_branches": self.dead_branches,
        }


@torch.no_grad()
def sparsity_stats(model: nn.Module, axis: Axis = "in") -> SparsityStats:
    """Exact zeros only: a group counts as sparse when every weight in it is 0."""
    stats = SparsityStats()
    for name, weight in shared_conv_weights(model):
        zero = group_norms(weight, axis) == 0
        stats.layers.append(
            LayerSparsity(
                name, zero.numel(), int(zero.sum()), weight.numel(), int(zero.sum()) * group_size(weight, axis)
            )
        )
    return stats
