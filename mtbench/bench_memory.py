"""``mtbench bench memory``: peak memory of loading a training split the way a run does.

For each case (a synthetic set in a real layout, at the real resolutions unless told otherwise) the
training split is loaded twice, with ``n`` and ``4n`` samples, each time in a fresh Python process whose
peak resident set size (``VmHWM``, read in that process) is the measurement. The peak is reset to the
current RSS just before the load (``/proc/self/clear_refs``), so that the transient peak of importing
torch, which can exceed a small load's, does not hide it (``ru_maxrss`` where that is not possible). The
difference of the two peaks over the ``3n`` extra samples is the memory a run needs per training sample;
the peaks are then extrapolated to the real training splits (CelebAMask-HQ 24,183, NYU-v2 795).

``stream=True`` also measures the streaming path (`mtbench.streaming.StreamingSet` over an Arrow cache
prepared from the case, DataLoader workers prefetching): ``steps`` training batches drawn as a run draws
them. Its memory is this process's peak RSS plus, for each worker process, the peak of its private dirty
memory (``Private_Dirty`` of ``/proc/<pid>/smaps_rollup``, sampled after every batch): what a worker
allocates or copies on write. Pages of the memory-mapped cache that a worker has read are page cache
(clean, shared, reclaimed by the kernel under pressure) and are not counted; neither are the pages a
forked worker shares with this process.

``compare=True`` also measures `legacy_load`: a copy of the loader before issue 10 (float32 images,
int64 labels, a list of samples stacked into a second copy, the full-resolution stack resized after),
kept in this module only for that comparison. Nothing else uses it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: real training-split sizes the peaks are extrapolated to
REAL_TRAIN_SAMPLES = {"celebamask": 24183, "nyuv2": 795}
MIB = 2**20


@dataclass(frozen=True)
class MemoryCase:
    """One synthetic set to measure: data set, layout, generator size options."""

    name: str
    dataset: str
    layout: str
    options: dict[str, int]
    family: str

    @property
    def size_text(self) -> str:
        if "image_size" in self.options:
            return f"image {self.options['image_size']}², masks {self.options['mask_size']}²"
        return f"{self.options['height']}×{self.options['width']}"


def default_cases(
    celeba_size: int = 512, nyu_size: tuple[int, int] = (288, 384), layouts: Sequence[str] | None = None
) -> list[MemoryCase]:
    """CelebAMask-HQ-like at the real mask resolution (the official reader resizes the 1024² images to
    the masks' 512² anyway), NYU-like at 288×384 in both of its file layouts (.npy floats and jpg/png);
    ``layouts`` keeps only those layouts (celebamask-official, nyuv2-mtan, nyuv2-nyudmt)."""
    height, width = nyu_size
    cases = [
        MemoryCase(
            "CelebAMask-HQ-like, official",
            "celebamask-synth",
            "celebamask-official",
            {"image_size": celeba_size, "mask_size": celeba_size},
            "celebamask",
        ),
        MemoryCase("NYU-v2-like, MTAN .npy", "nyuv2-synth", "nyuv2-mtan", {"height": height, "width": width}, "nyuv2"),
        MemoryCase(
            "NYU-v2-like, NYUD-MT jpg/png",
            "nyuv2-synth",
            "nyuv2-nyudmt",
            {"height": height, "width": width},
            "nyuv2",
        ),
    ]
    return [case for case in cases if layouts is None or case.layout in layouts]


@dataclass(frozen=True)
class Peak:
    """One child process: samples loaded, RSS peaks (KiB) before and after the load, bytes kept."""

    samples: int
    before_kib: int
    peak_kib: int
    stored_bytes: int
    seconds: float
    #: stream: the workers' summed peak private dirty memory (KiB), already included in ``peak_kib``
    workers_kib: int = 0

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def load_mib(self) -> float:
        return (self.peak_kib - self.before_kib) / 1024


@dataclass(frozen=True)
class MemoryResult:
    """One case and loader: the median child of the repeats at n (``small``) and 4n (``large``), and every child."""

    case: MemoryCase
    loader: str  # "compact" (TensorSet.load), "stream" (StreamingSet) or "legacy"
    resolution: tuple[int, int] | None
    small: Peak
    large: Peak
    small_all: tuple[Peak, ...] = ()
    large_all: tuple[Peak, ...] = ()

    @staticmethod
    def of(case: MemoryCase, loader: str, resolution: tuple[int, int] | None, small: Sequence[Peak],
           large: Sequence[Peak]) -> MemoryResult:
        """The result of repeated children: the median peak of each size (the upper median for an even count)."""

        def median(peaks: Sequence[Peak]) -> Peak:
            return sorted(peaks, key=lambda peak: peak.peak_kib)[len(peaks) // 2]

        return MemoryResult(case, loader, resolution, median(small), median(large), tuple(small), tuple(large))

    @staticmethod
    def spread_text(peaks: Sequence[Peak]) -> str:
        """`` (lowest–highest MiB)`` over the repeats, or nothing for a single child."""
        if len(peaks) < 2:
            return ""
        values = [peak.peak_mib for peak in peaks]
        return f" ({min(values):,.0f}–{max(values):,.0f})"

    @property
    def ratio(self) -> float:
        return self.large.peak_kib / self.small.peak_kib

    @property
    def slope_mib(self) -> float:
        """Peak MiB per training sample: (peak(4n) − peak(n)) / 3n."""
        return (self.large.peak_kib - self.small.peak_kib) / 1024 / (self.large.samples - self.small.samples)

    def extrapolated_mib(self, samples: int) -> float:
        return self.small.peak_mib + self.slope_mib * (samples - self.small.samples)

    def arithmetic(self, samples: int) -> str:
        return (
            f"{self.small.peak_mib:,.0f} MiB + {self.slope_mib:.3f} MiB/sample × ({samples:,} − {self.small.samples}) "
            f"= {self.extrapolated_mib(samples) / 1024:,.2f} GiB"
        )


# --- the loader before issue 10, for the comparison only ----------------------------------------------


def legacy_load(
    read: Callable[[int, Sequence[str]], dict[str, Any]],
    count: int,
    targets: Sequence[str],
    resolution: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """LEGACY, for `bench_memory(compare=True)` only: ``TensorSet.load`` as it was before issue 10."""
    import numpy as np
    import torch

    from mtbench.training import _resize

    samples = [read(i, targets) for i in range(count)]
    tensors = {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}
    if resolution is not None:
        tensors = {key: _resize(key, value, resolution) for key, value in tensors.items()}
    return tensors


# --- process memory (Linux /proc; None or False elsewhere) ----------------------------------------------


def _proc_kib(path: str, field: str) -> int | None:
    """A ``field: N kB`` line of the /proc file ``path``, in KiB; None if the file or the field is missing."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: resident now, ``VmHWM``: the peak), or None without /proc."""
    return _proc_kib("/proc/self/status", field)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0: ``clear_refs`` 5); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- the child process ----------------------------------------------------------------------------------


def _tasks_for(reader: Any, wanted: Sequence[Any], family: Sequence[Any]) -> list[Any]:
    """``wanted`` tasks the layout provides; one it does not is replaced by a task of the same kind it
    does (NYUD-MT: 40-class segmentation for the 13-class one)."""
    provided = set(reader.targets())
    chosen = [t for t in wanted if t.target in provided]
    for task in wanted:
        if task.target not in provided:
            used = {t.target for t in chosen}
            chosen += [t for t in family if t.kind == task.kind and t.target in provided - used][:1]
    return chosen


def private_dirty_kib(pid: int) -> int:
    """``Private_Dirty`` of process ``pid`` in KiB (0 if it is gone or /proc is missing)."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Private_Dirty") or 0


def _stream(data: Any, count: int, targets: Sequence[str], steps: int, batch: int) -> int:
    """Draw ``steps`` training batches as `TrainContext.train_batch` does; the workers' summed peak private
    dirty memory (KiB), sampled after every batch."""
    import torch

    from mtbench.training import train_indices

    def indices(step: int) -> list[list[int]] | None:
        if step >= steps:
            return None
        return [train_indices(step, seed=0, salt=0, size=count, batch=batch)]

    peaks: dict[int, int] = {}
    for step in range(steps):
        data.fetch(indices(step), targets, torch.device("cpu"), ahead=indices, position=step)
        for stream in data.streams.values():
            for worker in getattr(stream.iterator, "_workers", []):
                peaks[worker.pid] = max(peaks.get(worker.pid, 0), private_dirty_kib(worker.pid))
    assert data.stats["misses"] == 0 and data.stats["hits"] == steps, data.stats
    return sum(peaks.values())


def _child(job: dict[str, Any]) -> dict[str, Any]:
    """Load the training split of ``job['root']`` as a run does (or stream ``job['steps']`` batches of it
    from the Arrow cache ``job['cache']``); report the peaks."""
    import torch  # noqa: F401  (imported before the baseline, as in a run)

    from mtbench import catalog
    from mtbench.data.cache import ArrowCacheReader
    from mtbench.data.layouts import open_reader
    from mtbench.episodes import TaskView
    from mtbench.streaming import StreamingSet
    from mtbench.training import TensorSet

    spec = catalog.dataset(job["dataset"])
    if job["loader"] == "stream":
        reader: Any = ArrowCacheReader(job["cache"])
    else:
        reader = open_reader(spec.family, job["root"], job["layout"])
    seen = _tasks_for(
        reader, [catalog.task(spec.family, name) for name in job["tasks"]], catalog.family_tasks(spec.family)
    )
    view = TaskView(reader, spec.train_split, seen, [])
    targets = [t.target for t in seen]
    resolution = tuple(job["resolution"]) if job["resolution"] else None
    view.read(0, targets)  # first read outside the measurement: lazy indexes, decoder imports
    gc.collect()
    # the peak of importing torch can exceed a small load's: the peak is reset to the current RSS first,
    # so that the load's own peak is measured (ru_maxrss, which cannot be reset, where /proc is missing)
    reset = reset_peak_rss()
    before = proc_status_kib("VmRSS") if reset else None
    before = before if before is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    workers_kib = 0
    if job["loader"] == "stream":
        data = StreamingSet(view.read, job["count"], targets, resolution, workers=job["workers"])  # type: ignore[arg-type]
        workers_kib = _stream(data, job["count"], targets, job["steps"], job["batch"])
        data.close()
        stored = 0
    elif job["loader"] == "legacy":
        tensors = legacy_load(view.read, job["count"], targets, resolution)  # type: ignore[arg-type]
        stored = sum(t.untyped_storage().nbytes() for t in tensors.values())
    else:
        data = TensorSet.load(view.read, job["count"], targets, resolution)  # type: ignore[arg-type]
        stored = data.nbytes
    seconds = time.perf_counter() - start
    high = proc_status_kib("VmHWM") if reset else None
    peak = high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "before_kib": before, "peak_kib": peak + workers_kib, "stored_bytes": stored, "seconds": seconds,
        "workers_kib": workers_kib,
    }


def _measure(job: dict[str, Any]) -> Peak:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mtbench.bench_memory", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory benchmark child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Peak(
        job["count"], report["before_kib"], report["peak_kib"], report["stored_bytes"], report["seconds"],
        report["workers_kib"],
    )


# --- the benchmark ----------------------------------------------------------------------------------------


def bench_memory(
    scratch: Path,
    *,
    n: int = 32,
    cases: Sequence[MemoryCase] | None = None,
    resolution: tuple[int, int] | None = (256, 256),
    compare: bool = True,
    stream: bool = True,
    steps: int = 64,
    workers: int = 2,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[MemoryResult]:
    """Generate each case with at least ``4n`` training samples under ``scratch``, then measure the load
    of ``n`` and ``4n`` of them (TensorSet.load, and `legacy_load` with ``compare``), one process each; with
    ``stream``, also ``steps`` batches of 8 drawn from the first ``n`` / ``4n`` training samples, streamed
    from an Arrow cache of the case by ``workers`` DataLoader workers. Each size is measured ``repeats`` times,
    n and 4n alternating; the result keeps the median and every child."""
    from mtbench.errors import ConfigError

    if n < 1 or repeats < 1 or steps < 1 or workers < 0:
        raise ConfigError(
            "bench memory needs n >= 1, repeats >= 1, steps >= 1 and workers >= 0",
            found=f"n {n}, repeats {repeats}, steps {steps}, workers {workers}",
        )
    from mtbench import catalog
    from mtbench.data.cache import prepare
    from mtbench.data.layouts import open_reader
    from mtbench.data.synth import CELEBA_SPLIT_P, NYU_VAL_FRACTION

    results = []
    for number, case in enumerate(cases if cases is not None else default_cases()):
        spec = catalog.dataset(case.dataset)
        share = CELEBA_SPLIT_P[0] if case.family == "celebamask" else 1 - NYU_VAL_FRACTION
        total = math.ceil(4 * n / share * 1.15) + 4  # the CelebA-like split is drawn: room for chance
        root = scratch / f"case{number}"
        if progress:
            progress(f"generating {case.name}: {total} samples at {case.size_text}")
        assert spec.generator is not None
        spec.generator(root, n=total, seed=0, layout=case.layout, **case.options)
        available = open_reader(spec.family, root, case.layout).num_samples(spec.train_split)
        if available < 4 * n:
            raise RuntimeError(f"{case.name}: only {available} training samples generated, {4 * n} needed")
        loaders = (("legacy",) if compare else ()) + ("compact",) + (("stream",) if stream else ())
        for loader in loaders:
            peaks: dict[int, list[Peak]] = {n: [], 4 * n: []}
            cache = None
            if loader == "stream":
                if progress:
                    progress(f"{case.name}: preparing its Arrow cache")
                reader = open_reader(spec.family, root, case.layout)
                cache = prepare(reader, cache_root=scratch / f"case{number}-cache").path
            for count in [size for _ in range(repeats) for size in (n, 4 * n)]:
                if progress:
                    progress(f"{case.name}: loading {count} training samples ({loader} loader)")
                job = {
                    "root": str(root),
                    "dataset": case.dataset,
                    "layout": case.layout,
                    "tasks": list(spec.default_tasks),
                    "resolution": list(resolution) if resolution else None,
                    "count": count,
                    "loader": loader,
                    "cache": str(cache) if cache else None,
                    "steps": steps,
                    "batch": 8,
                    "workers": workers,
                }
                peaks[count].append(_measure(job))
            results.append(MemoryResult.of(case, loader, resolution, peaks[n], peaks[4 * n]))
    return results


def memory_table(results: Sequence[MemoryResult]) -> Any:
    """The measurements as a Rich table (units on every number)."""
    from rich.table import Table

    first = results[0]
    where = "native size" if first.resolution is None else f"{first.resolution[0]}×{first.resolution[1]}"
    table = Table(
        title=f"Peak RSS of the training split as a run holds it at {where}: loaded (compact: TensorSet.load; "
        "legacy: the loader before issue 10) or streamed (stream: batches read by DataLoader workers from the Arrow "
        "cache; + the workers' private memory), one fresh process per cell; the median of the repeats "
        "(lowest–highest)",
        title_justify="left",
    )
    columns = ("case", "size", "loader", "n", "peak RSS (n)", "4n", "peak RSS (4n)", "4n/n", "slope", "kept")
    columns += ("time (4n)",)
    for column in columns:
        table.add_column(column, justify="left" if column in ("case", "size", "loader") else "right")
    for result in results:
        small, large = result.small, result.large
        table.add_row(
            result.case.name,
            result.case.size_text,
            result.loader,
            f"{small.samples} samples",
            f"{small.peak_mib:,.0f} MiB{MemoryResult.spread_text(result.small_all)}",
            f"{large.samples} samples",
            f"{large.peak_mib:,.0f} MiB{MemoryResult.spread_text(result.large_all)}",
            f"{result.ratio:.2f}×",
            "—" if result.loader == "stream" else f"{result.slope_mib:.3f} MiB/sample",  # a stream holds batches
            f"{large.stored_bytes / large.samples / MIB:.3f} MiB/sample",  # what the loaded set holds
            f"{large.seconds:.1f} s",
        )
    return table


def extrapolation_table(results: Sequence[MemoryResult]) -> Any:
    """Peak RSS of the loaded paths extrapolated to the real training splits: peak(n) + slope × (N − n). The
    streamed path is left out: its memory follows the batches in flight, not the samples (its 4n/n ratio says so)."""
    from rich.table import Table

    table = Table(
        title="Extrapolated peak RSS for the real training splits: peak(n) + slope × (N − n) (loaded paths; a "
        "streamed run holds batches, not samples: see its 4n/n ratio)",
        title_justify="left",
    )
    for column in ("case", "loader", "N (real train)", "arithmetic", "peak RSS"):
        table.add_column(column, justify="left" if column in ("case", "loader", "arithmetic") else "right")
    legacy = {r.case.name: r for r in results if r.loader == "legacy"}
    for result in (r for r in results if r.loader != "stream"):
        samples = REAL_TRAIN_SAMPLES[result.case.family]
        peak = f"{result.extrapolated_mib(samples) / 1024:,.2f} GiB"
        old = legacy.get(result.case.name)
        if result.loader != "legacy" and old is not None:
            peak += f" ({old.extrapolated_mib(samples) / result.extrapolated_mib(samples):.1f}× less)"
        table.add_row(result.case.name, result.loader, f"{samples:,} samples", result.arithmetic(samples), peak)
    return table


if __name__ == "__main__":  # the child process of `_measure`
    print(json.dumps(_child(json.loads(sys.argv[1]))))
