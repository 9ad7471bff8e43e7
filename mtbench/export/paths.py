"""Inference paths: ways to run a compact network (BatchNorm folded) on the CPU, each checked against the dense one.

A path is a function ``build(model, images, tasks) -> call`` registered in `PATHS`: it turns a network whose
``forward(images, tasks)`` returns ``{task: output}`` into a callable ``call(images) -> (output, ...)`` (one
output per task, in ``tasks`` order) built for the shape of ``images`` (a deployed export has a fixed input
shape: every path is built once per batch size). Built in:

* ``eager`` — the network as it is;
* ``channels_last`` — weights and input in ``torch.channels_last``;
* ``jit_freeze`` — ``torch.jit.trace`` (eval mode, no grad) of the network with its tasks fixed, then
  ``torch.jit.freeze``;
* ``compile`` — ``torch.compile`` (inductor, whole graph, static shapes) of the same fixed-task network;
* ``onnxruntime`` — ``torch.onnx.export`` to ONNX, run by an ONNX Runtime ``InferenceSession`` on the
  ``CPUExecutionProvider`` with as many intra-op threads as torch (optional: ``pip install 'mtbench[export]'``).

`prepare` builds one path for every network of a run and checks its outputs against the dense network's on the
same input: the result is a `Prepared` path, or the reason why it cannot be timed — unavailable (a dependency
is missing, or building or running it raised: the first line of the exception) or wrong (outputs differ by more
than `TOLERANCE`, relative). No path is ever dropped silently.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtbench.registry import Registry

Outputs = tuple[Tensor, ...]
Call = Callable[[Tensor], Outputs]
Builder = Callable[[nn.Module, Tensor, Sequence[str]], Call]

#: largest accepted max |path − dense| per task, relative to max |dense| (floored at `SCALE_FLOOR`)
TOLERANCE = 1e-3
SCALE_FLOOR = 1e-2  #: outputs near zero are compared at this scale (float32 rounding is not relative there)
COMPILE_BACKEND = "inductor"  #: the ``torch.compile`` backend of the ``compile`` path


class PathUnavailable(Exception):
    """A path that cannot run here (a dependency is missing); the message says why."""


@dataclass(frozen=True)
class InferencePath:
    """One registered way to run a network: its name, one line about it, and its builder."""

    name: str
    summary: str
    build: Builder


PATHS: Registry[InferencePath] = Registry("inference path", listing="inference paths")


def register_path(name: str, summary: str) -> Callable[[Builder], Builder]:
    """Register ``build(model, images, tasks) -> call`` as the inference path ``name``."""

    def register(build: Builder) -> Builder:
        PATHS.register(name, InferencePath(name, summary, build))
        return build

    return register


def path_names() -> list[str]:
    """The registered paths, in registration order."""
    return PATHS.names()


class FixedTasks(nn.Module):
    """``model`` with its tasks fixed: ``forward(images)`` returns its outputs as a tuple, in ``tasks`` order (what
    a tracer, a compiler and an ONNX exporter take)."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = tuple(tasks)

    def forward(self, images: Tensor) -> Outputs:
        outputs = self.model(images, list(self.tasks))
        return tuple(outputs[task] for task in self.tasks)


@register_path("eager", "the compact network (BatchNorm folded) as it is")
def eager(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Call:
    return FixedTasks(model, tasks).eval()


@register_path("channels_last", "weights and input in torch.channels_last")
def channels_last(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Call:
    fixed = FixedTasks(copy.deepcopy(model).to(memory_format=torch.channels_last), tasks).eval()
    return lambda x: fixed(x.contiguous(memory_format=torch.channels_last))


@register_path("jit_freeze", "torch.jit.trace in eval mode, then torch.jit.freeze")
def jit_freeze(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Call:
    fixed = FixedTasks(model, tasks).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fixed, (images,), check_trace=False)
        return torch.jit.freeze(traced.eval())


@register_path("compile", f"torch.compile ({COMPILE_BACKEND}, whole graph, static shapes)")
def compiled(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Call:
    # fullgraph: a graph break, or a recompilation past dynamo's limit, is an error (reported), never a silent fall
    # back to eager. Every network and batch size compiles the same ``FixedTasks.forward`` anew (dynamo keeps one
    # entry per compilation on that code): the first call, which compiles, may add one past dynamo's default limit.
    # The limit is raised for the process, not for the first call only: later calls (timing rounds, a caller's
    # check) may still compile once more (and a test session compiles the same code object for many networks).
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 1024))
    for total in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, total):
            setattr(config, total, max(getattr(config, total), 4096))
    module = torch.compile(FixedTasks(model, tasks).eval(), backend=COMPILE_BACKEND, fullgraph=True, dynamic=False)

    def call(x: Tensor) -> Outputs:
        with torch.no_grad():  # one grad mode for every call: a change of it would be a recompilation
            return module(x)

    call(images)
    return call


def _onnx_bytes(module: nn.Module, images: Tensor, tasks: Sequence[str]) -> bytes:
    """The ONNX file of ``module`` for the shape of ``images`` (the TorchScript-based exporter, which needs no
    package beyond torch; the torch.export-based one where that fails)."""
    with tempfile.TemporaryDirectory(prefix="mtbench-onnx-") as folder:
        target = os.path.join(folder, "model.onnx")
        names = {"input_names": ["images"], "output_names": list(tasks)}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, (images,), target, dynamo=False, **names)
            except Exception as legacy:  # the other exporter may do; else the first error is the one reported
                try:
                    torch.onnx.export(module, (images,), target, dynamo=True, **names)
                except Exception:
                    raise legacy from None
        with open(target, "rb") as file:
            return file.read()


@register_path("onnxruntime", "ONNX export run by ONNX Runtime (CPUExecutionProvider, torch's thread count)")
def onnxruntime(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Call:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise PathUnavailable(f"onnxruntime not installed ({error}): pip install 'mtbench[export]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting threads after a run: they would take the cores from the next candidate of an interleaved round
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        _onnx_bytes(FixedTasks(model, tasks).eval(), images, tasks), options, providers=["CPUExecutionProvider"]
    )

    def call(x: Tensor) -> Outputs:
        return tuple(torch.from_numpy(out) for out in session.run(None, {"images": x.contiguous().numpy()}))

    return call


# --- checked preparation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A path built for every network of a run and checked: ``call(images)`` runs them all."""

    name: str
    call: Callable[[Tensor], list[Outputs]]
    max_abs_difference: float


@dataclass(frozen=True)
class Rejected:
    """A path that is not timed: ``unavailable`` (cannot run here) or ``mismatch`` (wrong outputs)."""

    name: str
    status: Literal["unavailable", "mismatch"]
    reason: str
    max_abs_difference: float | None = None


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def reference_outputs(model: nn.Module, images: Tensor, tasks: Sequence[str]) -> Outputs:
    """The outputs of ``model`` (the dense network, eval mode) in ``tasks`` order: what every path must give."""
    with torch.no_grad():
        outputs = model(images, list(tasks))
    return tuple(outputs[task] for task in tasks)


def compare(outputs: Any, reference: Outputs, tasks: Sequence[str]) -> tuple[float, str | None]:
    """Max |outputs − reference| over all tasks, and what is wrong (None: within `TOLERANCE`)."""
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(reference):
        count = len(outputs) if isinstance(outputs, (tuple, list)) else type(outputs).__name__
        return float("inf"), f"{count} outputs where {len(reference)} tasks ({', '.join(tasks)}) were asked for"
    largest, problem = 0.0, None
    for task, out, ref in zip(tasks, outputs, reference):
        out = torch.as_tensor(out)
        if tuple(out.shape) != tuple(ref.shape):
            return float("inf"), f"{task}: shape {tuple(out.shape)}, the dense network's {tuple(ref.shape)}"
        difference = float((out.float() - ref.float()).abs().max()) if ref.numel() else 0.0
        scale = max(float(ref.abs().max()) if ref.numel() else 0.0, SCALE_FLOOR)
        largest = max(largest, difference)
        if not difference <= TOLERANCE * scale and problem is None:  # NaN fails too
            problem = f"{task}: outputs differ by {difference:.3g} (> {TOLERANCE:g} × {scale:.3g})"
    return largest, problem


def prepare(
    name: str,
    models: Sequence[nn.Module],
    task_lists: Sequence[Sequence[str]],
    images: Tensor,
    references: Sequence[Outputs],
) -> Prepared | Rejected:
    """Build path ``name`` for each network (``models[i]`` serves ``task_lists[i]``) and check it against
    ``references[i]`` (`reference_outputs` of the dense network) on ``images``."""
    build = PATHS.get(name).build
    calls, largest = [], 0.0
    for model, tasks, reference in zip(models, task_lists, references):
        try:
            call = build(model, images, tasks)
            with torch.no_grad():
                outputs = call(images)  # the first call: where a compiler compiles
        except PathUnavailable as error:
            return Rejected(name, "unavailable", str(error))
        except Exception as error:  # whatever fails on this machine is reported, not raised
            return Rejected(name, "unavailable", first_line(error))
        difference, problem = compare(outputs, reference, tasks)
        if problem is not None:
            return Rejected(name, "mismatch", problem, difference if math.isfinite(difference) else None)
        calls.append(call)
        largest = max(largest, difference)
    return Prepared(name, run_all(calls), largest)


def run_all(calls: Sequence[Call]) -> Callable[[Tensor], list[Outputs]]:
    """One callable that runs every network of a run (one per task for stl) on the same images."""
    return lambda images: [call(images) for call in calls]


def eager_all(models: Sequence[nn.Module], task_lists: Sequence[Sequence[str]]) -> Callable[[Tensor], list[Outputs]]:
    """`run_all` of the networks as they are (eval mode), ``models[i]`` serving ``task_lists[i]``."""
    return run_all([FixedTasks(model, tasks).eval() for model, tasks in zip(models, task_lists)])
