"""Sparsity that pays: compact export of a run's network and its parameter/FLOP/latency accounting."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtbench import catalog
from mtbench.data.io import atomic_write_json
from mtbench.errors import ConfigError, DatasetNotFoundError
from mtbench.export import compact, count_flops, count_params, latency, load_compact, save_compact
from mtbench.models import ArchSpec, MultiTaskNet
from mtbench.result import Accounting, DenseCompact, Latency, RunResult

#: The latency benchmark of a run folder, written by `bench_inference` (``mtbench bench inference``).
INFERENCE_FILE = "inference.json"


@dataclass
class Network:
    """One trained network of a run and the task heads it serves."""

    tasks: list[str]
    model: MultiTaskNet


@dataclass
class RunModel:
    """The trained network(s) of a run, rebuilt from its folder: one for a multi-task method, one per
    task for single-task learning (serving every task then means running every network)."""

    result: RunResult
    networks: list[Network]
    input_size: tuple[int, int]

    @property
    def tasks(self) -> list[str]:
        return [task for network in self.networks for task in network.tasks]


def _input_size(result: RunResult) -> tuple[int, int]:
    if result.input_size:
        return result.input_size
    if result.protocol.budget_settings.resolution:
        return result.protocol.budget_settings.resolution
    generator = result.dataset.identity.get("generator") or {}
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
    """Rebuild the trained network(s) of ``run_dir`` (``result.json`` + ``checkpoint.pt``, no pickled code)."""
    run_dir = Path(run_dir)
    result_file, checkpoint = run_dir / "result.json", run_dir / "checkpoint.pt"
    for path in (result_file, checkpoint):
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{path} not found",
                expected="a run folder written by `mtbench run`",
                found=", ".join(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else "nothing",
            )
    return run_model(RunResult.read(result_file), torch.load(checkpoint, map_location="cpu", weights_only=True))


def run_model(result: RunResult, state: Mapping[str, Any]) -> RunModel:
    """The network(s) of a run rebuilt from its method's ``state_dict`` (read from ``checkpoint.pt``, or held in
    memory by the run that trained them)."""
    network = result.protocol.budget_settings.arch
    if network is None:
        raise ConfigError("cannot tell the network of this run", expected="protocol.arch in result.json",
                          found="none", fix="re-run it with this version of mtbench")
    arch = ArchSpec(network.backbone, network.widths, network.blocks, network.norm, network.head_hidden)
    family = result.dataset.family
    if "model" in state:
        parts = [(list(result.protocol.seen), state["model"])]
    else:  # one network per seen task (stl), in the protocol's task order
        parts = [([task], state[f"model/{task}"]) for task in result.protocol.seen]
    networks = []
    for tasks, weights in parts:
        model = MultiTaskNet(arch, [catalog.task(family, name) for name in tasks])
        model.load_state_dict(weights)
        networks.append(Network(tasks, model.eval()))
    return RunModel(result, networks, _input_size(result))


def account(run: RunModel, plain: list[nn.Module] | None = None) -> Accounting:
    """Parameters and FLOPs of a run's network(s), dense-with-zeros against compact (summed over networks).

    The compact network is the one `mtbench export` writes (zeroed channels physically removed); ``plain``: those
    networks when the caller has compacted them already. No latency (``latency_ms`` empty): that is
    `bench_inference`.
    """
    dense = [network.model for network in run.networks]
    plain = plain if plain is not None else [compact(model, fold_bn=False) for model in dense]
    flops_image = torch.rand(1, 3, *run.input_size)
    flops = [
        sum(count_flops(model, flops_image, network.tasks) for model, network in zip(models, run.networks))
        for models in (dense, plain)
    ]
    return Accounting(
        input_size=(run.input_size[0], run.input_size[1]),
        tasks=tuple(run.tasks),
        networks=len(run.networks),
        threads=torch.get_num_threads(),
        device="cpu",
        params=DenseCompact(dense=sum(map(count_params, dense)), compact=sum(map(count_params, plain))),
        flops=DenseCompact(dense=flops[0], compact=flops[1]),
        latency_ms={},
    )


def export_run(run_dir: Path, out: Path, *, fold_bn: bool = False, seed: int = 0) -> dict[str, Any]:
    """Compact the run's network(s), save (safetensors + JSON), reload and check against the dense ones.

    A run with one network per task writes ``<out stem>-<task><suffix>`` for each.
    """
    run = load_run(run_dir)
    out = Path(out)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, *run.input_size, generator=generator)
    files, difference, dense_params, compact_params = [], 0.0, 0, 0
    for network in run.networks:
        target = out if len(run.networks) == 1 else out.with_name(f"{out.stem}-{network.tasks[0]}{out.suffix}")
        save_compact(compact(network.model, fold_bn=fold_bn), target)
        reloaded = load_compact(target)
        with torch.no_grad():
            dense, small = network.model(images, network.tasks), reloaded(images, network.tasks)
        difference = max([difference, *(float((dense[t] - small[t]).abs().max()) for t in network.tasks)])
        dense_params += count_params(network.model)
        compact_params += count_params(reloaded)
        files.append((str(target), str(target.with_suffix(".json"))))
    return {
        "tasks": run.tasks,
        "networks": len(run.networks),
        "max_abs_difference": difference,
        "dense_params": dense_params,
        "compact_params": compact_params,
        "files": files,
    }


def bench_inference(
    run_dir: Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 20,
    threads: int | None = None,
    update: bool = True,
) -> Accounting:
    """Parameters, FLOPs and CPU latency, dense-with-zeros against compact, measured in one process.

    For a run with one network per task (stl) every measure is the sum over its networks.

    The report is written to the run folder as ``inference.json`` (a benchmark of this machine, apart from
    ``result.json``, which is written once by the run and holds its parameters and FLOPs) unless ``update``
    is False.
    """
    run = load_run(run_dir)
    if threads:
        torch.set_num_threads(threads)
    dense = [network.model for network in run.networks]
    plain = [compact(model, fold_bn=False) for model in dense]
    counts = account(run, plain)
    folded = [compact(model, fold_bn=True) for model in dense]
    task_lists = [network.tasks for network in run.networks]
    timed = {}
    for batch in batch_sizes:  # empty: parameters and FLOPs only (fast, no timing)
        images = torch.rand(batch, 3, *run.input_size)
        timed[str(batch)] = Latency(
            *(
                1e3 * sum(latency(model, images, tasks, repeats=repeats) for model, tasks in zip(models, task_lists))
                for models in (dense, plain, folded)
            )
        )
    report = dataclasses.replace(counts, latency_ms=timed)
    if update:
        atomic_write_json(Path(run_dir) / INFERENCE_FILE, report.to_json())
    return report
