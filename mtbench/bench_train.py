"""``mtbench bench train``: training-step throughput of several methods, measured side by side in one process.

Every method's training context is built as `mtbench.recipe.run` builds it (`runner.plan` resolves method,
config, budget, tasks and device; `recipe.open_data` the data set; `environment.apply_determinism` the kernel
choice; the same `TrainContext` with channels-last and bf16 autocast on CUDA), then:

1. ``warmup`` steps of every method (first-call allocations, cuDNN autotuning, `torch.compile`);
2. ``repeats`` rounds; in each round every method runs ``steps`` steps in turn (round-robin, so drift of the
   machine — another job, clocks, caches — spreads over all methods alike); a round's time per step is its
   block's wall time over ``steps``, with the device synchronised before and after the block;
3. ``steps`` more steps of each method under `torch.utils.flop_counter.FlopCounterMode` (convolutions and
   matrix products, forward and backward; their mean is the FLOPs of one step, which varies with the
   episode's task subset for the episodic learners) and the peak memory of those steps (host: the process's
   peak RSS, reset before them where Linux allows it; CUDA: ``max_memory_allocated``).

Reported per method: the median time per step and the spread of the rounds ((max − min) / median), images
per second (distinct samples a step draws: the batch; support + query for the episodic learners), FLOPs per
step, achieved FLOP/s, on CUDA the fraction of the device's dense bf16 peak (`BF16_PEAK_TFLOPS`), peak
memory, and time and FLOPs as ratios to the first method (ew by default).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtbench.bench_memory import proc_status_kib, reset_peak_rss
from mtbench.errors import ConfigError

#: Dense (no structured sparsity) bf16 tensor-core peak in TFLOP/s, by a fragment of
#: ``torch.cuda.get_device_name``; the first matching fragment wins (so the PCIe variants come first).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)

#: The default comparison; ``meta-sparsity:first_order=false`` adds the second-order meta-gradient.
DEFAULT_METHODS = ("ew", "fixed-lambda", "meta-sparsity")


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU name from `BF16_PEAK_TFLOPS`; None for an unknown one."""
    if not device_name:
        return None
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a method, its ``--set`` options, and whether its forward is compiled.

    Written ``NAME[:key=value,...]`` (``compile=true`` compiles the forwards; the others are ``--set``
    options), e.g. ``meta-sparsity:first_order=false`` or ``ew:compile=true``.
    """

    method: str
    overrides: dict[str, str] = field(default_factory=dict)
    compile: bool = False

    @property
    def label(self) -> str:
        options = [f"{k}={v}" for k, v in self.overrides.items()] + (["compile"] if self.compile else [])
        return self.method + (f" ({', '.join(options)})" if options else "")

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.partition(":")
        overrides: dict[str, str] = {}
        compiled = False
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(
                    f"method variant {text!r}: options are key=value", expected="NAME[:key=value,...]", found=item
                )
            if key.strip() == "compile":
                compiled = value.strip().lower() in ("true", "1", "yes")
            else:
                overrides[key.strip()] = value.strip()
        return cls(name.strip(), overrides, compiled)


@dataclass
class StepMeasure:
    """What `bench_train` measured for one variant."""

    label: str
    seconds_per_step: list[float]  #: one per round
    images_per_step: int
    flops_per_step: int
    host_peak_rss: int  #: bytes
    device_peak: int | None  #: bytes (CUDA only)
    warmup_seconds: float = 0.0  #: the warm-up steps together (first calls, autotuning, compilation)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds_per_step)

    @property
    def spread(self) -> float:
        """(max − min) / median of the rounds' times per step."""
        return (max(self.seconds_per_step) - min(self.seconds_per_step)) / self.median

    @property
    def images_per_second(self) -> float:
        return self.images_per_step / self.median

    @property
    def flops_per_second(self) -> float:
        return self.flops_per_step / self.median


@dataclass
class TrainBenchReport:
    dataset: str
    budget: str
    device: str
    device_name: str | None
    deterministic: bool
    threads: int
    warmup: int
    steps: int
    repeats: int
    peak_tflops: float | None
    measures: list[StepMeasure]

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if k != "measures"},
            "measures": [
                {
                    **asdict(m),
                    "median_seconds_per_step": m.median,
                    "spread": m.spread,
                    "images_per_second": m.images_per_second,
                    "flops_per_second": m.flops_per_second,
                }
                for m in self.measures
            ],
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_peak(reset_worked: bool) -> int:
    kib = proc_status_kib("VmHWM") if reset_worked else None
    peak = None if kib is None else kib * 1024
    if peak is None:  # the lifetime peak (ru_maxrss is KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def bench_train(
    variants: Sequence[Variant],
    *,
    dataset: str = "nyuv2-synth",
    budget: str = "quick",
    device: str = "auto",
    deterministic: bool | None = None,
    warmup: int = 2,
    steps: int = 5,
    repeats: int = 3,
    seed: int = 0,
    notice: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainBenchReport:
    """Time ``steps`` training steps of every variant, round-robin, ``repeats`` times (see the module docstring)."""
    from mtbench.data.resolve import split_name
    from mtbench.environment import apply_determinism
    from mtbench.episodes import TaskView
    from mtbench.recipe import open_data
    from mtbench.runner import RunRequest, plan
    from mtbench.training import TensorSet, TrainContext

    if not variants:
        raise ConfigError("no method to benchmark", expected="at least one method", found="none")
    if warmup < 0 or steps < 1 or repeats < 1:
        raise ConfigError("bench train needs steps >= 1, repeats >= 1, warmup >= 0",
                          found=f"steps {steps}, repeats {repeats}, warmup {warmup}")
    plans = [
        plan(
            RunRequest(
                method=v.method, dataset=dataset, budget=budget, overrides=dict(v.overrides), device=device,
                reference=False, seed=seed, deterministic=deterministic, compile=v.compile,
            ),
            notice,
        )
        for v in variants
    ]
    first = plans[0]
    the_device = first.device
    on_cuda = the_device.type == "cuda"
    compiling = any(p.request.compile for p in plans)  # TorchInductor's own determinism option then matters
    is_deterministic = apply_determinism(
        first.request.resolved_deterministic(the_device), the_device, compiling=compiling
    )
    opened = open_data(first, notice)
    spec, reader = opened.spec, opened.reader
    seen = list(first.seen)
    view = TaskView(reader, split_name(reader, spec.train_split), seen, [])
    b = first.budget
    count = len(view) if b.max_train_samples is None else min(len(view), b.max_train_samples)
    train_data = TensorSet.load(view.read, count, [t.target for t in seen], b.resolution)

    drawn: dict[int, set[int]] = {}

    class CountingContext(TrainContext):
        """The run's context, noting which samples each step draws (for images per step)."""

        current = 0

        def batch(self, indices: Sequence[int], tasks: Sequence[str]) -> dict[str, torch.Tensor]:
            drawn.setdefault(self.current, set()).update(int(i) for i in indices)
            return super().batch(indices, tasks)

        def fetch(
            self, requests: Sequence[Sequence[int]], tasks: Sequence[str], *args: Any
        ) -> list[dict[str, torch.Tensor]]:
            for indices in requests:
                drawn.setdefault(self.current, set()).update(int(i) for i in indices)
            return super().fetch(requests, tasks, *args)

    runs = []
    for variant, the_plan in zip(variants, plans):
        torch.manual_seed(seed)
        ctx = CountingContext(
            b, seen, train_data, seed, the_device, channels_last=on_cuda, autocast=on_cuda,
            deterministic=is_deterministic, compile=variant.compile,
        )
        method = the_plan.method.method(the_plan.config)
        method.setup(ctx)
        runs.append([variant, ctx, method, 0])

    def one_step(entry: list[Any]) -> None:
        _, ctx, method, index = entry
        ctx.current = index
        method.step(ctx, index)
        entry[3] = index + 1

    total = len(runs) * (warmup + steps * (repeats + 1))
    done = 0
    warmup_seconds = []
    for entry in runs:
        _sync(the_device)
        start = time.perf_counter()
        for _ in range(warmup):
            one_step(entry)
            done += 1
            if progress:
                progress(done, total)
        _sync(the_device)
        warmup_seconds.append(time.perf_counter() - start)
    times: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    for _ in range(repeats):
        for i, entry in enumerate(runs):
            _sync(the_device)
            start = time.perf_counter()
            for _ in range(steps):
                one_step(entry)
            _sync(the_device)
            times[i].append((time.perf_counter() - start) / steps)
            done += steps
            if progress:
                progress(done, total)

    measures = []
    for i, entry in enumerate(runs):
        variant, ctx, method, index = entry
        drawn.clear()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(the_device)
        reset = reset_peak_rss()
        compiled, ctx.compile = ctx.compile, False  # count FLOPs on the eager graph (same operations)
        with FlopCounterMode(display=False) as counter:
            for _ in range(steps):
                one_step(entry)
        ctx.compile = compiled
        _sync(the_device)
        done += steps
        if progress:
            progress(done, total)
        measures.append(
            StepMeasure(
                label=variant.label,
                seconds_per_step=times[i],
                images_per_step=round(sum(len(v) for v in drawn.values()) / steps),
                flops_per_step=round(counter.get_total_flops() / steps),
                host_peak_rss=_host_peak(reset),
                device_peak=torch.cuda.max_memory_allocated(the_device) if on_cuda else None,
                warmup_seconds=warmup_seconds[i],
            )
        )
    name = torch.cuda.get_device_name(the_device) if on_cuda else None
    return TrainBenchReport(
        dataset=spec.name,
        budget=b.name,
        device=str(the_device),
        device_name=name,
        deterministic=is_deterministic,
        threads=torch.get_num_threads(),
        warmup=warmup,
        steps=steps,
        repeats=repeats,
        peak_tflops=bf16_peak_tflops(name) if on_cuda else None,
        measures=measures,
    )


def train_table(report: TrainBenchReport) -> Any:
    """The report as a rich table: units on every column, time and FLOPs as ratios to the first method."""
    from rich.table import Table

    on_cuda = report.device.startswith("cuda")
    title = (
        f"Training step, {report.dataset}, budget {report.budget}, {report.device}"
        + (f" ({report.device_name})" if report.device_name else f" ({report.threads} threads)")
        + f", {'deterministic' if report.deterministic else 'non-deterministic'}; median of {report.repeats} "
        f"rounds of {report.steps} steps after {report.warmup} warm-up, methods round-robin"
    )
    table = Table(title=title, title_justify="left")
    base = report.measures[0]
    first = base.label.split(" ")[0]
    columns = [  # two-line headers, so that the units stay beside their names in a narrow console
        "method",
        "ms/step\nmedian",
        "spread\n%",
        "images/s",
        "GFLOP\n/step",
        "GFLOP/s",
        "% bf16\npeak",
        "host peak\nRSS MiB",
        "device\npeak MiB",
        f"time\n× {first}",
        f"GFLOP\n× {first}",
        "warm-up\ns",
    ]
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=column == "method")
    for m in report.measures:
        peak = (
            f"{100 * m.flops_per_second / (report.peak_tflops * 1e12):.2f}"
            if on_cuda and report.peak_tflops
            else ""
        )
        table.add_row(
            m.label,
            f"{1e3 * m.median:,.1f}",
            f"{100 * m.spread:.1f}",
            f"{m.images_per_second:,.1f}",
            f"{m.flops_per_step / 1e9:,.3f}",
            f"{m.flops_per_second / 1e9:,.2f}",
            peak,
            f"{m.host_peak_rss / 2**20:,.0f}",
            f"{m.device_peak / 2**20:,.0f}" if m.device_peak is not None else "",
            f"{m.median / base.median:.2f}",
            f"{m.flops_per_step / base.flops_per_step:.2f}" if base.flops_per_step else "",
            f"{m.warmup_seconds:.2f}",
        )
    return table


__all__ = [
    "BF16_PEAK_TFLOPS",
    "DEFAULT_METHODS",
    "StepMeasure",
    "TrainBenchReport",
    "Variant",
    "bench_train",
    "bf16_peak_tflops",
    "train_table",
]
