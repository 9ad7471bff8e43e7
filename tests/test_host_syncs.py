"""No host synchronisation inside a training step: every method's step, run on the CPU under a detector.

On CUDA a step that reads a tensor's value on the host (``float(t)``, ``.item()``, ``bool(t)``, ``if t > 0``,
``.tolist()``, ``.cpu()``, ``.numpy()``) waits for every kernel queued before it. On the CPU nothing waits, so
the tests build the detector themselves: `HostSyncDetector` records every call that would move tensor *data*
between device and host, with the place in our code that made it.

What it catches (on any device, the CPU included):

* reads of a tensor's value on the host, at the Python level (``item``, ``__float__``, ``__int__``,
  ``__bool__`` (``if t``, ``and``/``or``/``not``, ``assert t``), ``__index__``, ``__complex__``, ``tolist``,
  ``numpy``, ``__array__`` (``np.asarray(t)``), ``cpu``, ``__format__``/``__repr__`` (printing)) through a
  `torch.overrides.TorchFunctionMode`;
* reads made inside torch's C++ and ops whose output size depends on the data (the CUDA kernel then copies a
  count back), through a `torch.utils._python_dispatch.TorchDispatchMode`: ``_local_scalar_dense`` (the aten
  op behind every scalar read, including those an op makes internally, e.g. ``F.one_hot``'s range check on
  the CPU), ``nonzero`` (also behind boolean-mask indexing ``t[mask]``), ``masked_select``, ``unique``,
  ``repeat_interleave`` without ``output_size``, ``equal``;
* uploads: tensors made from host data (Python numbers, lists, NumPy arrays) directly on the compute device
  (``torch.tensor``/``as_tensor``/``asarray`` with ``device=``, ``Tensor.new_tensor``): from pageable memory
  such a copy waits for the device too.

Only data counts, never metadata: shapes, ``numel()``, ``dtype``, ``device`` are host values already. A read of a
tensor the detector saw arrive on the host (the result of a counted ``.cpu()``, or a tensor made on the host
from host data) is not counted again. Reads inside ``torch.optim`` are not counted: torch's non-fused Adam
keeps its step counter on the CPU by design and reads it there; fused/capturable Adam keeps it on the device
and never reads it.

What it cannot catch: ``.to("cpu")``/``.to(device)`` (on a CPU run the compute device *is* the CPU, so a move
to the host and a move to the compute device look alike; ``.cpu()`` is caught), copies of host tensors to the
device made with ``.to(device)``, syncs hidden in CUDA kernels or libraries that do not go through a scalar
read (allocator growth, cuDNN benchmarking, ``torch.cuda.synchronize``), and anything in compiled graphs.
`test_steps_on_cuda_do_not_synchronise` runs the real check, ``torch.cuda.set_sync_debug_mode``, where a GPU
is present.

Data loading (``ctx.train_batch``, ``ctx.episode_batches``) is outside what is checked here: it is the
engine's, and the detector is paused while it runs.

Where a host read is free (`mtbench.sparsity.host_reads_are_free`: the CPU), two places keep a host form on
purpose: the prox's Newton loop exits early (same numbers as running on) and DWA computes its weights in NumPy
(bit for bit the former numbers). The step tests patch it to False, so the detector sees the forms an
accelerator runs; `test_device_forms_give_the_cpu_numbers` checks that those forms give the CPU numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from conftest import random_nyu_context
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from mtbench import sparsity
from mtbench.methods import methods
from mtbench.sparsity import ProximalAdam, group_norms, prox_group_lasso_, weighted_group_prox
from mtbench.training import TrainContext, train

# --- the detector ----------------------------------------------------------------------------------------

_TORCH = os.path.dirname(torch.__file__) + os.sep
_TORCH_OPTIM = os.path.join(_TORCH, "optim") + os.sep
_HERE = os.path.abspath(__file__)

#: The detector's own functions (skipped when looking for the code that made a call).
_DETECTOR_FRAMES = {"_origin", "_record", "on_function", "on_dispatch", "__torch_function__", "__torch_dispatch__"}
#: Tensor methods that read the tensor's data on the host.
_READ_METHODS = {
    "item",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
    "__complex__",
    "tolist",
    "numpy",
    "__array__",
    "cpu",
    "__format__",
    "__repr__",
}
#: Functions that make a tensor from host data (an upload when the tensor is made on the compute device).
_FROM_HOST = {"tensor", "as_tensor", "asarray", "from_numpy", "new_tensor"}
#: aten ops that read data on the host, or whose output size depends on the data.
_READ_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
}


def _has_mask(indices: Any) -> bool:
    """Whether an ``index``/``index_put`` index list holds a boolean mask (its kernel then finds the True
    positions with ``nonzero``, a read of the count)."""
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


@dataclasses.dataclass(frozen=True)
class Sync:
    """One host synchronisation: ``kind`` (``read``/``upload``), the call, and where our code made it."""

    kind: str
    call: str
    where: str  # file:function of the innermost frame outside torch
    line: int

    def __str__(self) -> str:
        return f"{self.kind} {self.call} at {self.where}:{self.line}"


class HostSyncDetector:
    """Records the host synchronisations (see the module docstring) made while it is entered."""

    def __init__(self) -> None:
        self.events: list[Sync] = []
        self._paused = 0
        self._inside = 0  # > 0 while a counted call runs: its own aten ops are not counted twice
        self._host: dict[int, weakref.ref] = {}  # tensors known to live on the host
        self._modes: list[Any] = []

    # -- bookkeeping
    def _origin(self) -> tuple[str, int] | None:
        """``(file:function, line)`` of the innermost frame outside torch; None when torch.optim made the call."""
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(_TORCH_OPTIM):
                return None
            own = path == _HERE and frame.f_code.co_name in _DETECTOR_FRAMES
            if not own and not path.startswith(_TORCH):
                return f"{os.path.basename(path)}:{frame.f_code.co_name}", frame.f_lineno
            frame = frame.f_back
        return None

    def _record(self, kind: str, call: str) -> None:
        origin = self._origin()
        if origin is not None:
            self.events.append(Sync(kind, call, *origin))

    def _on_host(self, tensor: Any) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def _mark_host(self, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            self._host[id(value)] = weakref.ref(value)

    @property
    def active(self) -> bool:
        return not self._paused and not self._inside

    # -- the two modes
    def on_function(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = getattr(func, "__name__", "")
        counted = None
        if self.active and name in _READ_METHODS and args and isinstance(args[0], torch.Tensor):
            if not self._on_host(args[0]):
                counted = ("read", name)
        elif self.active and name == "new_tensor" and len(args) > 1 and not isinstance(args[1], torch.Tensor):
            counted = ("upload", name)  # made on the device of the tensor it is called on
        elif self.active and name in _FROM_HOST and args and not isinstance(args[0], torch.Tensor):
            device = kwargs.get("device", args[2] if name == "as_tensor" and len(args) > 2 else None)
            if device is not None:
                counted = ("upload", name)
        if counted is None:
            result = func(*args, **kwargs)
            if name in _FROM_HOST and name != "new_tensor" and args and not isinstance(args[0], torch.Tensor):
                self._mark_host(result)  # made on the host (no device given): reading it is free
            return result
        self._record(*counted)
        self._inside += 1
        try:
            result = func(*args, **kwargs)
        finally:
            self._inside -= 1
        if name == "cpu":
            self._mark_host(result)
        return result

    def on_dispatch(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = func.overloadpacket.__name__
        if self.active and name in _READ_OPS:
            self._record("read", f"aten.{name}")
        elif self.active and name in ("index", "index_put", "index_put_") and _has_mask(args[1]):
            self._record("read", f"aten.{name} (boolean mask)")  # the kernel's nonzero, not dispatched here
        elif self.active and name == "repeat_interleave" and kwargs.get("output_size") is None:
            self._record("read", "aten.repeat_interleave")
        return func(*args, **kwargs)

    # -- use
    def __enter__(self) -> HostSyncDetector:
        detector = self

        class Functions(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return detector.on_function(func, args, kwargs or {})

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return detector.on_dispatch(func, args, kwargs or {})

        self._modes = [Functions(), Dispatch()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []

    @contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def exempt(self, fn: Callable) -> Callable:
        """``fn`` run with the detector paused (the engine's data loading)."""

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.paused():
                return fn(*args, **kwargs)

        return run


def test_the_detector_catches_reads_and_uploads_but_not_metadata():
    t = torch.tensor([1.0, -2.0, 3.0])
    mask = t > 0
    catches: dict[str, Callable[[], Any]] = {
        "float": lambda: float(t.sum()),
        "item": lambda: t.sum().item(),
        "int": lambda: int(t[0]),
        "bool": lambda: bool(t.sum() > 0),
        "if": lambda: 1 if t.sum() > 0 else 0,
        "index": lambda: [0, 1, 2][t.long()[0]],
        "tolist": lambda: t.tolist(),
        "cpu": lambda: t.cpu(),
        "numpy": lambda: t.numpy(),
        "asarray": lambda: np.asarray(t),
        "mask": lambda: t[mask],
        "mask assignment": lambda: t.clone().__setitem__(mask, 0.0),
        "nonzero": lambda: torch.nonzero(t),
        "any": lambda: bool(mask.any()),
        "one_hot": lambda: torch.nn.functional.one_hot(torch.tensor([0, 1]), 2),  # its CPU range check
        "upload scalar": lambda: torch.as_tensor(0.5, device=t.device),
        "upload list": lambda: torch.tensor([1.0, 2.0], device=t.device),
        "new_tensor": lambda: t.new_tensor([1.0]),
        "print": lambda: f"{t.sum():.3f}",
    }
    for what, call in catches.items():
        with HostSyncDetector() as detector:
            call()
        assert detector.events, what
        assert all(e.where == "test_host_syncs.py:<lambda>" for e in detector.events), (what, detector.events)
    with HostSyncDetector() as detector:
        _ = (t.shape, t.numel(), len(t), t.dtype, t.device, t.dim(), t.size(0))  # metadata
        _ = (t * 2).sum(), torch.where(mask, t, 0.0), mask.all(), torch.full((), 0.5)  # device work
        host = t.cpu()  # one read …
        host.numpy(), host.tolist()  # … and what is then on the host is free
        torch.as_tensor([1.0, 2.0])  # made on the host, no device: not an upload
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        torch.optim.Adam([p]).step()  # torch's own CPU step counter
    assert [e.call for e in detector.events] == ["cpu"], detector.events


# --- the steps ------------------------------------------------------------------------------------------

STEPS = 6

#: (method, config overrides): every built-in training step, and the variants with other code paths.
CASES = [
    ("ew", {}),
    ("pcgrad", {}),
    ("uw", {}),
    ("dwa", {}),
    ("dwa", {"window": 2}),
    ("mgda", {}),
    ("mgda", {"upper_bound": False}),
    ("cagrad", {}),
    ("famo", {}),
    ("famo", {"optimizer": "sgd"}),
    ("gradnorm", {}),
    ("stl", {}),
    ("fixed-lambda", {}),
    ("fixed-lambda", {"lam": 1.0}),
    ("fixed-lambda", {"prox": "plain", "axis": "out"}),
    ("fixed-lambda", {"bias_correction": False}),
    ("meta-sparsity", {}),
    ("meta-sparsity", {"lam_init": 3.0, "hypergradient": "online"}),
    ("meta-sparsity", {"lam_path": "prox", "per_layer": True, "lam_init": 1.0}),
    ("meta-dense", {}),
    ("prune", {"prune_at": 0.3}),
    ("prune", {"prune_at": 0.3, "scope": "layer"}),
]

#: The host solvers by design (see their docstrings): per step, one read of the K × K Gram matrix and one copy
#: of the K weights back (non-blocking from pinned memory on CUDA).
EXPECTED_PER_STEP = {
    "mgda": [("read", "cpu", "aggregators.py:gram"), ("upload", "as_tensor", "aggregators.py:to_device")],
    "cagrad": [("read", "cpu", "aggregators.py:gram"), ("upload", "as_tensor", "aggregators.py:to_device")],
}


def _context(device: str = "cpu") -> TrainContext:
    return random_nyu_context(device=device, steps=STEPS, log_every=1)


def _method(name: str, overrides: dict[str, Any]) -> Any:
    info = methods().get(name)
    return info.method(dataclasses.replace(info.config(), **overrides))


@pytest.fixture
def device_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the forms an accelerator runs: no host read is free (`mtbench.sparsity.host_reads_are_free`)."""
    monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device: False, raising=False)


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
def test_a_step_reads_nothing_back(name: str, overrides: dict[str, Any], device_forms: None):
    """Every step of every method, under the detector: no host read, no upload (the host solvers: their one each)."""
    torch.manual_seed(0)
    ctx = _context()
    method = _method(name, overrides)
    method.setup(ctx)
    detector = HostSyncDetector()
    ctx.train_batch = detector.exempt(ctx.train_batch)  # type: ignore[method-assign]
    ctx.episode_batches = detector.exempt(ctx.episode_batches)  # type: ignore[method-assign]
    expected = EXPECTED_PER_STEP.get(name, [])
    for step in range(STEPS):
        detector.events.clear()
        with detector:
            method.step(ctx, step)
        found = [(e.kind, e.call, e.where) for e in detector.events]
        assert found == expected, f"step {step}: " + "; ".join(str(e) for e in detector.events)
    if name == "prune":
        assert method.masks is not None  # the pruning step was among them
    if name == "fixed-lambda" and overrides.get("lam") == 1.0:
        assert any((group_norms(w) == 0).any() for w in method.optimizer.param_groups[1]["params"])


# --- the device-side forms give the CPU numbers -----------------------------------------------------------

#: Methods whose device-side forms must give the CPU numbers bit for bit (the prox's fixed-count Newton loop).
SAME_NUMBERS = [case for case in CASES if case[0] in ("fixed-lambda", "meta-sparsity")]


@pytest.mark.parametrize(("name", "overrides"), SAME_NUMBERS, ids=[f"{n}{o or ''}" for n, o in SAME_NUMBERS])
def test_device_forms_give_the_cpu_numbers(name: str, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """The prox without its early exit (what CUDA runs) trains to the very same parameters and history."""
    runs = []
    for free in (True, False):
        monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device, free=free: free)
        torch.manual_seed(0)
        method = _method(name, overrides)
        history = train(method, _context()).history
        runs.append((history, {k: v.clone() for k, v in method.model.state_dict().items()}))
    (history_cpu, state_cpu), (history_device, state_device) = runs
    assert history_cpu == history_device
    assert all(torch.equal(state_cpu[k], state_device[k]) for k in state_cpu)


def test_newton_loop_without_early_exit_is_bit_identical(monkeypatch: pytest.MonkeyPatch):
    """Random problems, some needing many iterations, some stopped by the cap: both loops, the same floats."""
    generator = torch.Generator().manual_seed(5)
    capped = 0
    for trial in range(60):
        groups, n = 1 + trial % 7, 1 + (trial * 7) % 40
        v = torch.randn(groups, n, generator=generator, dtype=torch.float64) * 10.0 ** (trial % 5 - 2)
        d = torch.rand(groups, n, generator=generator, dtype=torch.float64) * 10.0 ** (trial % 9 - 4) + 1e-8
        if trial % 6 == 0:
            d[0] = torch.logspace(-6, 6, n, dtype=torch.float64)  # hard for Newton: many bisections
        tau = (d * v).norm(dim=1) * torch.rand(groups, generator=generator, dtype=torch.float64) * 1.3
        results = {}
        for cap in (60, 3):  # 3: the cap stops both loops before convergence
            for free in (True, False):
                monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device, free=free: free)
                results[cap, free] = weighted_group_prox(v, d, tau, iterations=cap)
            assert torch.equal(results[cap, True], results[cap, False]), (trial, cap)
        capped += not torch.equal(results[60, True], results[3, True])
    assert capped > 10  # many problems needed more than 3 iterations: the frozen radii were exercised


def _random_layers(generator: torch.Generator, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` conv kernels of varied shapes (a few zero groups) and Adam-like metrics for them."""
    weights, metrics = [], []
    for index in range(count):
        out_channels, in_channels, k = 2 + index % 5, 1 + (index * 3) % 7, 1 + 2 * (index % 2)
        weight = torch.randn(out_channels, in_channels, k, k, generator=generator) * 10.0 ** (index % 3 - 1)
        weight[:, index % in_channels] = 0.0  # a group zeroed already
        weights.append(weight)
        metrics.append(torch.rand(weight.shape, generator=generator) * 10.0 ** (index % 4 - 3) + 1e-8)
    return weights, metrics


@pytest.mark.parametrize("axis", ["in", "out"])
def test_every_layer_in_one_newton_solve_gives_the_per_layer_prox(axis: str, monkeypatch: pytest.MonkeyPatch):
    """An accelerator's prox solves all layers at once (ragged rows end to end): the per-layer results, to the
    float32 the weights keep (the float64 sums run in another order); a layer with λ ≤ 0 stays as it was."""
    generator = torch.Generator().manual_seed(9)
    weights, metrics = _random_layers(generator, 9)
    thresholds = [torch.tensor(0.05 * (index % 4), dtype=torch.float64) for index in range(9)]  # 0: skipped
    per_layer = [w.clone() for w in weights]
    monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device: False)
    for weight, metric, threshold in zip(per_layer, metrics, thresholds):
        prox_group_lasso_([weight], threshold, axis, [metric], skip_nonpositive=True)
    together = [w.clone() for w in weights]
    calls = []
    solve = sparsity._weighted_prox_all_layers_
    monkeypatch.setattr(sparsity, "_weighted_prox_all_layers_", lambda *a, **k: calls.append(1) or solve(*a, **k))
    prox_group_lasso_(together, thresholds, axis, metrics, skip_nonpositive=True)
    assert calls == [1]
    for index, (a, b) in enumerate(zip(together, per_layer)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-30, msg=f"layer {index}")
        if index % 4 == 0:
            assert torch.equal(a, weights[index])  # λ = 0: untouched, bit for bit
    assert sum(int((group_norms(w, axis) == 0).sum()) for w in together) > 9  # the prox zeroed more groups


def test_one_newton_solve_for_every_layer_launches_far_fewer_kernels(monkeypatch: pytest.MonkeyPatch):
    """Each aten op is a kernel launch on a GPU: the device form of the prox per layer costs ~17 per iteration per
    layer (all 60 iterations), the one-solve form ~17 per iteration in all."""

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    weights, metrics = _random_layers(torch.Generator().manual_seed(3), 12)
    monkeypatch.setattr(sparsity, "host_reads_are_free", lambda device: False)
    per_layer, together = Count(), Count()
    with per_layer:
        for weight, metric in zip([w.clone() for w in weights], metrics):
            prox_group_lasso_([weight], 0.05, "in", [metric])
    with together:
        prox_group_lasso_([w.clone() for w in weights], 0.05, "in", metrics)
    assert per_layer.ops > 12 * 60 * 10  # every layer runs all iterations
    assert together.ops * 8 < per_layer.ops, (together.ops, per_layer.ops)


def test_dwa_device_weights_match_numpy():
    """DWA's device form computes `dwa_weights`'s formula; only torch's exp may round differently from NumPy's."""
    from mtbench_baselines.dwa import dwa_weights, dwa_weights_on_device

    rng = np.random.default_rng(0)
    for window in (1, 2, 3):
        history = [torch.tensor(rng.uniform(0.1, 5.0, size=4), dtype=torch.float32) for _ in range(2 * window + 1)]
        expected = dwa_weights([h.tolist() for h in history], window, 2.0)
        on_cpu = dwa_weights_on_device(history, window, 2.0)
        assert np.array_equal(on_cpu.numpy(), expected)  # the CPU form is the NumPy one, bit for bit
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sparsity, "host_reads_are_free", lambda device: False)
            on_device = dwa_weights_on_device(history, window, 2.0)
        assert on_device.dtype == torch.float64
        assert np.allclose(on_device.numpy(), expected, rtol=1e-14, atol=0)


def _greedy_masks(weights: list[torch.Tensor], fraction: float, axis: str) -> list[torch.Tensor]:
    """`lowest_norm_masks(scope="global")` as it was written before: a host-side greedy walk (the reference)."""
    norms = [group_norms(w, axis) for w in weights]
    keep = [torch.ones_like(n, dtype=torch.bool) for n in norms]
    relative = torch.cat([n / n.mean().clamp_min(1e-30) for n in norms])
    layer_of = torch.cat([torch.full_like(n, i, dtype=torch.long) for i, n in enumerate(norms)])
    position = torch.cat([torch.arange(n.numel()) for n in norms])
    remaining = [n.numel() for n in norms]
    target, removed = round(fraction * relative.numel()), 0
    for index in torch.argsort(relative, stable=True).tolist():
        if removed == target:
            break
        layer = int(layer_of[index])
        if remaining[layer] > 1:
            keep[layer][int(position[index])] = False
            remaining[layer] -= 1
            removed += 1
    return [k.view(sparsity.group_shape(axis)) for k in keep]


def test_prune_masks_on_the_device_are_the_greedy_ones():
    """Random layers (ties, zero groups, one-group layers, sparsity up to 0.99): the same masks as the walk."""
    generator = torch.Generator().manual_seed(3)
    for trial in range(300):
        layers = 1 + trial % 6
        weights = []
        for layer in range(layers):
            groups = [1, 2, 3, 5, 8][(trial * 3 + layer) % 5]
            w = torch.randn(1 + (trial + layer) % 3, groups, 1, 1, generator=generator)
            weights.append(w.round() if trial % 3 == 0 else w * (trial % 7 != 1))  # ties; all-zero layers
        fraction = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99][trial % 7]
        axis = "in" if trial % 2 else "out"
        expected = _greedy_masks(weights, fraction, axis)
        found = sparsity.lowest_norm_masks(weights, fraction, axis)
        assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(expected, found)), trial


# --- ProximalAdam's host step count and tensor λ -----------------------------------------------------------


def test_host_step_counts_as_torch_counts():
    """``state["host_step"]`` equals Adam's own count, with gradients missing at some steps, and after a
    state loaded without it (a plain Adam's)."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3, 1, 1)), torch.nn.Parameter(torch.randn(3))
    optimizer = ProximalAdam([{"params": [b]}, {"params": [a], "group_lasso": True, "lam": 0.1}], lr=0.01)
    for step in range(7):
        a.grad = torch.randn_like(a) if step % 3 != 1 else None
        b.grad = torch.randn_like(b) if step >= 2 else None
        optimizer.step()
        for p in (a, b):
            state = optimizer.state.get(p, {})
            assert state.get("host_step") == (int(state["step"]) if state else None), (step, state.keys())
    plain = torch.optim.Adam([torch.nn.Parameter(a.detach().clone())], lr=0.01)
    plain.param_groups[0]["params"][0].grad = torch.ones_like(a)
    plain.step()
    plain.step()
    c = torch.nn.Parameter(a.detach().clone())
    resumed = ProximalAdam([{"params": [c], "group_lasso": True, "lam": 0.1}], lr=0.01)
    state = plain.state_dict()
    state["param_groups"][0].update(group_lasso=True, lam=0.1, axis="in")
    resumed.load_state_dict(state)
    c.grad = torch.ones_like(c)
    resumed.step()
    assert resumed.state[c]["host_step"] == 3 == int(resumed.state[c]["step"])


@pytest.mark.parametrize("prox", ["adam", "plain"])
def test_tensor_lambda_gives_the_float_lambda_numbers(prox: str):
    """λ as 0-dim tensors (meta-sparsity's, no host read) or as floats: the same parameters bit for bit;
    λ ≤ 0 leaves the layer exactly as Adam left it."""
    torch.manual_seed(4)
    w0 = torch.randn(6, 5, 3, 3)
    w0[:, :2] *= 0.01
    grads = [torch.randn_like(w0) * s for s in (1.0, 0.3, 2.0)]
    lams = [torch.tensor(0.7), torch.tensor(2.3), torch.tensor(0.0), torch.tensor(-1.0)]  # float32, as exp(ρ)
    finals = []
    for as_tensor in (False, True):
        params = [torch.nn.Parameter(w0.clone()) for _ in lams]
        values = lams if as_tensor else [float(lam) for lam in lams]  # the former .tolist()
        group = {"params": params, "group_lasso": True, "lam": lambda v=values: v}
        optimizer = ProximalAdam([group], lr=0.05, prox=prox)
        for g in grads:
            for p in params:
                p.grad = g.clone()
            optimizer.step()
        finals.append([p.detach().clone() for p in params])
    assert all(torch.equal(x, y) for x, y in zip(*finals))
    adam_only = torch.nn.Parameter(w0.clone())
    reference = torch.optim.Adam([adam_only], lr=0.05)
    for g in grads:
        adam_only.grad = g.clone()
        reference.step()
    assert torch.equal(finals[1][2], adam_only.detach()) and torch.equal(finals[1][3], adam_only.detach())
    assert (group_norms(finals[1][1]) == 0).any()  # the prox did act on the λ > 0 layers


def test_python_threshold_makes_no_upload(device_forms: None):
    """A float threshold is written on the device (``torch.full``), not copied there from the host."""
    w = torch.randn(4, 3, 3, 3)
    with HostSyncDetector() as detector:
        prox_group_lasso_([w], 0.1)
        prox_group_lasso_([w], 0.1, denominators=[torch.ones_like(w)])
    assert detector.events == []


# --- on a GPU: the real check ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[f"{n}{o or ''}" for n, o in CASES])
def test_steps_on_cuda_do_not_synchronise(name: str, overrides: dict[str, Any]):
    """``torch.cuda.set_sync_debug_mode`` counts the synchronising CUDA calls of steps 1… (step 0 also
    initialises optimiser states and libraries): none, or the host solvers' one read."""
    import warnings

    torch.manual_seed(0)
    ctx = dataclasses.replace(_context("cuda"), deterministic=False)  # fused Adam, as a CUDA run gets it
    method = _method(name, overrides)
    method.setup(ctx)

    def quiet(fn: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(before)

        return run

    ctx.train_batch = quiet(ctx.train_batch)  # type: ignore[method-assign]
    ctx.episode_batches = quiet(ctx.episode_batches)  # type: ignore[method-assign]
    method.step(ctx, 0)
    torch.cuda.synchronize()
    allowed = 1 if name in EXPECTED_PER_STEP else 0
    for step in range(1, STEPS):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                method.step(ctx, step)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= allowed, (step, syncs)
