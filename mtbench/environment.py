"""The software and hardware a run uses and records: threads, kernel determinism, versions, CPU/GPU."""

from __future__ import annotations

import functools
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtbench
from mtbench.allocator import applied_settings
from mtbench.callbacks import Notice
from mtbench.errors import ConfigError
from mtbench.result import Environment


def use_deterministic_algorithms(mode: bool, *, compiling: bool) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``, without importing TorchInductor unless needed.

    The public function also sets TorchInductor's own ``deterministic`` option, and importing TorchInductor
    for that costs about 1.6 s of CPU per run (torch 2.14). Only compiled code reads that option, so a run
    that compiles nothing sets the kernel flag alone (the call the public function makes); a compiling run,
    or one where TorchInductor is already imported, goes through the public function.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiling or "torch._inductor.config" in sys.modules or set_flag is None:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        set_flag(mode, warn_only=True)


def apply_determinism(deterministic: bool, device: torch.device, *, compiling: bool = False) -> bool:
    """Set torch's kernel choice on ``device``; returns ``deterministic``.

    Deterministic: ``torch.use_deterministic_algorithms(True)`` (warn-only) and no cuDNN autotuning;
    otherwise neither, and ``torch.backends.cudnn.benchmark`` on CUDA (autotuned convolutions).
    ``compiling``: the run compiles its forwards (see `use_deterministic_algorithms`).
    """
    use_deterministic_algorithms(deterministic, compiling=compiling)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return deterministic


PUBLISHED_THREADS = 1  # the CPU thread count of every published result
_THREADS_NOTICED: set[int] = set()


def apply_threads(threads: int | None, notice: Notice | None = None) -> int:
    """Set torch's CPU thread count (None: keep its default) and say when it differs from the published tables'.

    Returns the thread count the run uses.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(
                "--threads must be a positive integer", expected="1, 2, …", found=repr(threads),
                fix=f"pass --threads {PUBLISHED_THREADS} to reproduce the published tables",
            )
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    if used != PUBLISHED_THREADS and notice is not None and used not in _THREADS_NOTICED:
        _THREADS_NOTICED.add(used)  # once per process (a run plans its stl reference too)
        notice(
            f"this run uses {used} CPU threads; the published tables use {PUBLISHED_THREADS}, and a seed's last "
            f"digits depend on the count: --threads {PUBLISHED_THREADS} reproduces them exactly"
        )
    return used


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), or None when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.lru_cache(maxsize=1)
def math_libraries() -> list[str]:
    """The BLAS/oneDNN builds torch uses, one short line each (from ``torch.__config__.show()``)."""
    lines = []
    for line in torch.__config__.show().splitlines():
        text = line.strip().lstrip("- ").strip()
        if text.startswith("Build settings") or not re.search(r"MKL|Math Kernel|oneDNN|DNNL|OpenBLAS", text):
            continue
        if not re.search(r"\d+\.\d+", text):  # "LAPACK is enabled" and the like: no version, no information
            continue
        text = re.sub(r"\s*\(Git Hash [^)]*\)", "", text).split(" for ")[0]
        lines.append(text[:100])
    return lines


def environment(device: torch.device, deterministic: bool | None = None) -> Environment:
    """Software and hardware a result was made with (a key recorded as None is written as null).

    ``deterministic`` (None: read torch's current ``use_deterministic_algorithms`` setting, which `run`
    sets from the request) and ``cudnn_benchmark`` (torch's current setting) say which kernels ran.

    Exact numbers of a seed hold for one machine and thread count only: the CPU model, its kernel choice
    (``cpu_capability``: AVX2, AVX512 …) and the number of threads change floating-point reduction order.
    They are recorded here but are *not* part of the configuration key, so a re-run on another machine
    replaces the stored result (with a notice) instead of splitting leaderboard cells by hardware:
    conclusions rest on intervals over seeds, not on the last digits of one seed.
    """
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    info: dict[str, Any] = {
        "mtbench": mtbench.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_capability": capability() if capability else None,
        "math_libraries": math_libraries(),
        "deterministic": torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "malloc": applied_settings(),  # glibc's allocator settings (mtbench.allocator), None if left at the defaults
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        from importlib.metadata import version

        info["learn2learn"] = version("learn2learn")
    except Exception:  # pragma: no cover - learn2learn is a dependency
        info["learn2learn"] = None
    return Environment.from_json(info)
