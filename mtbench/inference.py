"""Sparsity that pays: compact export of a run's network and its parameter/FLOP/latency accounting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtbench import catalog
from mtbench.data.io import atomic_write_json
from mtbench.errors import ConfigError, DatasetNotFoundError
from mtbench.export import compact, count_flops, count_params, load_compact, save_compact
from mtbench.export.measure import interleaved, quartiles
from mtbench.export.paths import Prepared, Rejected, eager_all, path_names, prepare, reference_outputs
from mtbench.models import ArchSpec, MultiTaskNet
from mtbench.result import Accounting, DenseCompact, Latency, PathLatency, RunResult

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


def resolve_paths(paths: Sequence[str] | None) -> list[str]:
    """The inference paths asked for (None: every registered one), checked against the registry."""
    known = path_names()
    if paths is None:
        return known
    unknown = [name for name in paths if name not in known]
    if unknown or not paths:
        raise ConfigError(
            f"unknown inference path {', '.join(map(repr, unknown))}" if unknown else "no inference path named",
            expected=f"a comma-separated list of {', '.join(known)}",
            found=", ".join(paths) or "nothing",
        )
    return list(dict.fromkeys(paths))


DENSE, COMPACT = "dense network", "compact network (BN kept)"  #: the two candidates that are not paths


def _ms(seconds: float) -> float:
    return 1e3 * seconds


def bench_inference(
    run_dir: Path,
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    paths: Sequence[str] | None = None,
    update: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Accounting:
    """Parameters, FLOPs and CPU latency, dense-with-zeros against compact, measured in one process
    (`measure_latency`: every inference path in ``paths``, None: all).

    For a run with one network per task (stl) every measure is the sum over its networks.

    The report is written to the run folder as ``inference.json`` (a benchmark of this machine, apart from
    ``result.json``, which is written once by the run and holds its parameters and FLOPs) unless ``update``
    is False. ``progress`` is told what is being built or timed.
    """
    names = resolve_paths(paths)
    run = load_run(run_dir)
    if threads:
        torch.set_num_threads(threads)
    plain = [compact(network.model, fold_bn=False) for network in run.networks]
    counts = account(run, plain)
    timed = measure_latency(
        run.networks, run.input_size, batch_sizes=batch_sizes, repeats=repeats, warmup=warmup, paths=names,
        plain=plain, progress=progress,
    )
    report = dataclasses.replace(counts, latency_ms=timed)
    if update:
        atomic_write_json(Path(run_dir) / INFERENCE_FILE, report.to_json())
    return report


def measure_latency(
    networks: Sequence[Network],
    input_size: tuple[int, int],
    *,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 20,
    warmup: int = 5,
    paths: Sequence[str] | None = None,
    plain: Sequence[nn.Module] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Latency]:
    """CPU latency per batch size (as text): the dense network(s), the compact one(s) (BatchNorm kept) and every
    inference path of the compact network(s) with BatchNorm folded.

    Per batch size, on one random batch: every path (``paths``: names in `mtbench.export.paths.PATHS`, None: all)
    is built and checked against the dense network's outputs (`mtbench.export.paths.prepare`); a path that cannot
    run here, or whose outputs differ, is reported as such (`PathLatency.status`) and not timed. Then the dense
    network, the compact one, the folded one (``eager``, always: `Latency.compact_bn_folded`) and every checked
    path are timed in interleaved rounds (`mtbench.export.measure.interleaved`: ``warmup`` untimed calls each,
    then ``repeats`` rounds that call every candidate once), each reported by its median and interquartile range
    over the rounds. With several networks (stl) one call of a candidate runs them all. ``plain``: the compact
    networks (BatchNorm kept) where the caller has them already.
    """
    names = resolve_paths(paths)
    say = progress or (lambda text: None)
    dense = [network.model for network in networks]
    plain = list(plain) if plain is not None else [compact(model, fold_bn=False) for model in dense]
    folded = [compact(model, fold_bn=True) for model in dense]
    task_lists = [network.tasks for network in networks]
    generator = torch.Generator().manual_seed(0)
    timed = {}
    for batch in batch_sizes:  # empty: parameters and FLOPs only (fast, no timing)
        images = torch.rand(batch, 3, *input_size, generator=generator)
        references = [reference_outputs(m, images, tasks) for m, tasks in zip(dense, task_lists)]
        prepared: dict[str, Prepared | Rejected] = {}
        for name in names:
            say(f"batch {batch}: building and checking {name}")
            prepared[name] = prepare(name, folded, task_lists, images, references)
        # the dense and compact networks under names no path has; the folded one (``eager``) is timed even where
        # its outputs were wrong or it was not asked for: it is `Latency.compact_bn_folded`
        candidates: dict[str, Callable[[torch.Tensor], Any]] = {
            DENSE: eager_all(dense, task_lists),
            COMPACT: eager_all(plain, task_lists),
            "eager": eager_all(folded, task_lists),
        }
        candidates.update({n: p.call for n, p in prepared.items() if isinstance(p, Prepared) and n != "eager"})
        say(f"batch {batch}: timing {', '.join(candidates)} in {repeats} interleaved rounds")
        times = {
            name: quartiles(seconds)
            for name, seconds in interleaved(candidates, images, repeats=repeats, warmup=warmup).items()
        }
        results = {}
        for name, done in prepared.items():
            if isinstance(done, Rejected):
                results[name] = PathLatency(
                    name, done.status, max_abs_difference=done.max_abs_difference, reason=done.reason
                )
            else:
                low, median, high = map(_ms, times[name])
                results[name] = PathLatency(name, "ok", median, low, high, done.max_abs_difference)
        timed[str(batch)] = Latency(
            dense=_ms(times[DENSE][1]),
            compact=_ms(times[COMPACT][1]),
            compact_bn_folded=_ms(times["eager"][1]),
            rounds=max(1, repeats),
            dense_spread=(_ms(times[DENSE][0]), _ms(times[DENSE][2])),
            compact_spread=(_ms(times[COMPACT][0]), _ms(times[COMPACT][2])),
            paths=results,
        )
    return timed
