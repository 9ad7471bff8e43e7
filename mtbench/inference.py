"""Sparsity that pays: compact export of a run's network and its parameter/FLOP/latency accounting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbench import catalog
from mtbench.data.io import atomic_write_json
from mtbench.errors import ConfigError, DatasetNotFoundError
from mtbench.export import compact, count_flops, count_params, latency, load_compact, save_compact
from mtbench.models import ArchSpec, MultiTaskNet


@dataclass
class RunModel:
    """The trained network of a run, rebuilt from its folder."""

    payload: dict[str, Any]
    model: MultiTaskNet
    tasks: list[str]
    input_size: tuple[int, int]


def _input_size(payload: dict[str, Any]) -> tuple[int, int]:
    if payload.get("input_size"):
        return tuple(payload["input_size"])  # type: ignore[return-value]
    if payload["protocol"].get("resolution"):
        return tuple(payload["protocol"]["resolution"])  # type: ignore[return-value]
    generator = payload["dataset"]["identity"].get("generator") or {}
    if "height" in generator:
        return generator["height"], generator["width"]
    if "mask_size" in generator:
        return generator["mask_size"], generator["mask_size"]
    raise ConfigError(
        "cannot tell the input size of this run",
        expected="input_size in result.json",
        found="none",
        fix="re-run it with this version of mtbench",
    )


def load_run(run_dir: Path) -> RunModel:
    """Rebuild the trained network of ``run_dir`` (``result.json`` + ``checkpoint.pt``, no pickled code)."""
    run_dir = Path(run_dir)
    result, checkpoint = run_dir / "result.json", run_dir / "checkpoint.pt"
    for path in (result, checkpoint):
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{path} not found",
                expected="a run folder written by `mtbench run`",
                found=", ".join(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else "nothing",
            )
    payload = json.loads(result.read_text())
    arch_fields = dict(payload["protocol"]["arch"])
    arch_fields["widths"] = tuple(arch_fields["widths"])
    arch = ArchSpec(**arch_fields)
    family = payload["dataset"]["family"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model" in state:
        tasks = list(payload["protocol"]["seen"])
        weights = state["model"]
    else:  # one network per task (stl): the first seen task's network
        key = sorted(k for k in state if k.startswith("model/"))[0]
        tasks, weights = [key.split("/", 1)[1]], state[key]
    model = MultiTaskNet(arch, [catalog.task(family, name) for name in tasks])
    model.load_state_dict(weights)
    return RunModel(payload, model.eval(), tasks, _input_size(payload))


def export_run(run_dir: Path, out: Path, *, fold_bn: bool = False, seed: int = 0) -> dict[str, Any]:
    """Compact the run's network, save it (safetensors + JSON), reload it and check it against the dense one."""
    run = load_run(run_dir)
    net = compact(run.model, fold_bn=fold_bn)
    save_compact(net, Path(out))
    reloaded = load_compact(Path(out))
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, *run.input_size, generator=generator)
    with torch.no_grad():
        dense, small = run.model(images, run.tasks), reloaded(images, run.tasks)
    difference = max(float((dense[t] - small[t]).abs().max()) for t in run.tasks)
    return {
        "tasks": run.tasks,
        "max_abs_difference": difference,
        "dense_params": count_params(run.model),
        "compact_params": count_params(reloaded),
        "file": str(out),
        "config": str(Path(out).with_suffix(".json")),
    }


def bench_inference(
    run_dir: Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 20,
    threads: int | None = None,
    update: bool = True,
) -> dict[str, Any]:
    """Parameters, FLOPs and CPU latency, dense-with-zeros against compact, measured in one process.

    The report goes into the run's ``result.json`` (key ``inference``) unless ``update`` is False.
    """
    run = load_run(run_dir)
    if threads:
        torch.set_num_threads(threads)
    net = compact(run.model, fold_bn=False)
    folded = compact(run.model, fold_bn=True)
    report: dict[str, Any] = {
        "input_size": list(run.input_size),
        "tasks": run.tasks,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "params": {"dense": count_params(run.model), "compact": count_params(net)},
    }
    flops_image = torch.rand(1, 3, *run.input_size)
    report["flops"] = {
        "dense": count_flops(run.model, flops_image, run.tasks),
        "compact": count_flops(net, flops_image, run.tasks),
    }
    report["latency_ms"] = {}
    for batch in batch_sizes:  # empty: parameters and FLOPs only (fast, no timing)
        images = torch.rand(batch, 3, *run.input_size)
        report["latency_ms"][str(batch)] = {
            "dense": 1e3 * latency(run.model, images, run.tasks, repeats=repeats),
            "compact": 1e3 * latency(net, images, run.tasks, repeats=repeats),
            "compact_bn_folded": 1e3 * latency(folded, images, run.tasks, repeats=repeats),
        }
    if update:
        path = Path(run_dir) / "result.json"
        payload = json.loads(path.read_text())
        payload["inference"] = report
        atomic_write_json(path, payload)
    return report
