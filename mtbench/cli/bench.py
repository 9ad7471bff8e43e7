"""``mtbench bench …``: benchmarks that print measured ratios."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mtbench import catalog
from mtbench.bench_memory import default_cases
from mtbench.cli.common import LayoutOption, open_dataset, reports_errors
from mtbench.cli.progress import progress_bar
from mtbench.cli.render import console, inference_table, loader_table
from mtbench.errors import ConfigError
from mtbench.presets import budget_help

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Benchmarks that print measured ratios.")


def _synthetic() -> list[str]:
    """The registered synthetic data sets."""
    return [name for name, spec in catalog.datasets().items() if spec.synthetic]


@app.command("data")
@reports_errors
def bench_data(
    dataset: Annotated[str, typer.Argument(help=f"Data set name: {', '.join(catalog.datasets().names())}.")] = (
        "nyuv2-synth"
    ),
    root: Annotated[Path | None, typer.Option(help="Existing folder; default: a fresh synthetic set.")] = None,
    n: Annotated[int, typer.Option("--n", help="Samples to read per loader.")] = 200,
    layout: LayoutOption = None,
) -> None:
    """Samples/s of the raw-layout reader and of the Arrow cache, measured side by side in one run.

    Example: `mtbench bench data nyuv2-synth --n 200`
    """
    from mtbench.bench import bench_loaders
    from mtbench.data.cache import ArrowCacheReader, prepare

    spec = catalog.dataset(dataset)
    scratch = Path(tempfile.mkdtemp(prefix="mtbench-bench-"))
    try:
        if root is None:
            if spec.generator is None:
                raise ConfigError(
                    f"{dataset} is real: name its folder with --root", expected="--root DIR", found="none"
                )
            root = scratch / "data"
            with progress_bar(f"generating {dataset}") as update:
                spec.generator(
                    root,
                    n=max(n * 4 // 3 + 2, 8),
                    seed=0,
                    layout=layout or spec.layouts[0],
                    progress=update,
                    **spec.synth_options,
                )
        reader = open_dataset(dataset, root, layout)
        with progress_bar("preparing the Arrow cache") as update:
            prepared = prepare(reader, cache_root=scratch / "cache", progress=update)
        split = reader.splits()[0]
        timings = bench_loaders(reader, ArrowCacheReader(prepared.path), split=split, count=n)
        console.print(loader_table(dataset, split, reader.targets(), timings))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@app.command("inference")
@reports_errors
def bench_inference(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (result.json + checkpoint.pt).")],
    repeats: Annotated[
        int, typer.Option(help="Interleaved rounds: each times every network and path once (median, quartiles).")
    ] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed forwards of each network and path first.")] = 5,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    paths: Annotated[
        str,
        typer.Option(
            help="Inference paths of the compact network (BN folded), comma-separated: "
            "eager, channels_last, jit_freeze, compile, onnxruntime (onnxruntime: pip install 'mtbench[export]'), "
            "or all."
        ),
    ] = "all",
    latency: Annotated[bool, typer.Option(help="Time forwards (off: parameters and FLOPs only).")] = True,
) -> None:
    """Parameters, FLOPs and CPU latency (batch 1 and 16): dense-with-zeros against compact, in one run.

    The compact network with BatchNorm folded is run by each inference path (eager, channels-last memory format,
    torch.jit.freeze, torch.compile, ONNX Runtime); each is checked against the dense network's outputs first (a
    path that cannot run here is shown as unavailable, with the reason; one with wrong outputs is an error), then
    all are timed in interleaved rounds. The table gives per batch and path the median, the interquartile range,
    the ratio to the dense network and that ratio ÷ the FLOP ratio (1.0: as fast as its FLOPs promise).

    The report is written to the run folder as inference.json (result.json, written once by the run, keeps
    its own parameter and FLOP counts).

    Examples: `mtbench bench inference runs/<run id>`,
    `mtbench bench inference runs/<run id> --paths eager,channels_last,onnxruntime --repeats 50 --threads 2`,
    `mtbench bench inference --no-latency runs/*`
    """
    from mtbench.inference import bench_inference as measure

    names = None if paths.strip() in ("", "all") else [name.strip() for name in paths.split(",") if name.strip()]
    wrong = []
    for run_dir in run_dirs:
        report = measure(
            run_dir, repeats=repeats, warmup=warmup, threads=threads, paths=names,
            batch_sizes=(1, 16) if latency else (),
            progress=lambda text: console.print(f"[dim]{escape(text)}[/dim]"),
        )
        console.print(inference_table(run_dir, report))
        wrong += [
            f"{run_dir}: batch {batch}, {path.path}: {path.reason}"
            for batch, timing in (report.latency_ms or {}).items()
            for path in (timing.paths or {}).values()
            if path.status == "mismatch"
        ]
    if wrong:
        raise ConfigError(
            "an inference path gives outputs other than the dense network's",
            expected="every path within tolerance of the dense network (relative 1e-3)",
            found="; ".join(wrong),
            fix="this is a bug in that path or in the compact export: report it",
        )


@app.command("memory")
@reports_errors
def bench_memory(
    n: Annotated[int, typer.Option("--n", help="Training samples of the small load; the large one loads 4n.")] = 32,
    resolution: Annotated[
        int | None, typer.Option(help="Square size the training set is resized to (default: the paper preset's).")
    ] = None,
    celeba_size: Annotated[int, typer.Option(help="Side of the CelebAMask-like images and masks.")] = 512,
    nyu_size: Annotated[str, typer.Option(help="HxW of the NYU-like scenes.")] = "288x384",
    compare: Annotated[
        bool, typer.Option(help="Also measure the loader before issue 10 (a labelled copy kept for this only).")
    ] = True,
    case: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Layout to measure (repeatable): {', '.join(c.layout for c in default_cases())} (default: all)."
        ),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(help="Also measure the streaming path (`mtbench run --data stream`) over an Arrow cache."),
    ] = True,
    steps: Annotated[int, typer.Option(help="Batches of 8 the streaming path draws.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers of the streaming path.")] = 2,
    repeats: Annotated[
        int, typer.Option(help="Fresh processes per size (n and 4n alternating); the median is reported.")
    ] = 3,
) -> None:
    """Peak RSS of loading a training split as a run does, for n and 4n samples, each in a fresh process;
    the ratio, the MiB per sample, and the extrapolation to CelebAMask-HQ (24,183) and NYU-v2 (795).

    Example: `mtbench bench memory --n 32` (CelebAMask-like 512², NYU-like 288×384, paper preset's 256²;
    loaded compactly, by the loader before issue 10, and streamed)
    """
    from mtbench.bench_memory import bench_memory as measure
    from mtbench.bench_memory import default_cases, extrapolation_table, memory_table
    from mtbench.presets import BUDGETS

    try:
        height, width = (int(side) for side in nyu_size.lower().split("x"))
    except ValueError:
        raise ConfigError("--nyu-size must be HxW", expected="e.g. 288x384", found=nyu_size) from None
    size = (resolution, resolution) if resolution else BUDGETS["paper"].resolution
    scratch = Path(tempfile.mkdtemp(prefix="mtbench-bench-memory-"))
    try:
        results = measure(
            scratch,
            n=n,
            cases=default_cases(celeba_size, (height, width), case or None),
            resolution=size,
            compare=compare,
            stream=stream,
            steps=steps,
            workers=workers,
            repeats=repeats,
            progress=lambda text: console.print(f"[dim]{text}[/dim]"),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    console.print(memory_table(results))
    console.print(extrapolation_table(results))


@app.command("train")
@reports_errors
def bench_train_command(
    methods: Annotated[
        list[str] | None,
        typer.Argument(
            help="Methods, NAME[:key=value,...] (--set options; compile=true compiles the forwards), e.g. "
            "meta-sparsity:first_order=false. Default: ew fixed-lambda meta-sparsity."
        ),
    ] = None,
    dataset: Annotated[str, typer.Option(help=f"Synthetic data set: {' or '.join(_synthetic())}.")] = "nyuv2-synth",
    budget: Annotated[str, typer.Option(help=f"Network, resolution and batch of a budget: {budget_help()}")] = "quick",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic",
            help="As for `mtbench run` (default by device: on for the CPU, off on CUDA).",
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed steps per method first.")] = 2,
    steps: Annotated[int, typer.Option(help="Timed steps per method in each round.")] = 5,
    repeats: Annotated[int, typer.Option(help="Rounds (methods round-robin); the median round is reported.")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the measurements to this file.")] = None,
) -> None:
    """Time per training step, images/s, FLOPs per step, achieved FLOP/s (and on CUDA the fraction of the
    GPU's bf16 peak) and peak memory of several methods, measured round-robin in one process.

    Examples: `mtbench bench train --budget smoke`,
    `mtbench bench train ew meta-sparsity meta-sparsity:first_order=false --budget paper --device cuda`,
    `mtbench bench train ew ew:compile=true --budget quick --steps 3`
    """
    import json

    from mtbench.bench_train import DEFAULT_METHODS, Variant, bench_train, train_table
    from mtbench.cli.render import print_notice

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    variants = [Variant.parse(text) for text in (methods or DEFAULT_METHODS)]
    with progress_bar(f"bench train: {', '.join(v.label for v in variants)}") as update:
        report = bench_train(
            variants, dataset=dataset, budget=budget, device=device, deterministic=deterministic,
            warmup=warmup, steps=steps, repeats=repeats, notice=print_notice, progress=update,
        )
    console.print(train_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
