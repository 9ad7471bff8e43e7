"""``mtbench bench …``: benchmarks that print measured ratios."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from mtbench import catalog
from mtbench.cli.common import LayoutOption, open_dataset, reports_errors
from mtbench.cli.progress import progress_bar
from mtbench.cli.render import console, inference_table, loader_table
from mtbench.errors import ConfigError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Benchmarks that print measured ratios.")


@app.command("data")
@reports_errors
def bench_data(
    dataset: Annotated[str, typer.Argument(help="Data set name.")] = "nyuv2-synth",
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
    repeats: Annotated[int, typer.Option(help="Timed forwards per measurement (median).")] = 20,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    latency: Annotated[bool, typer.Option(help="Time forwards (off: parameters and FLOPs only).")] = True,
) -> None:
    """Parameters, FLOPs and CPU latency (batch 1 and 16): dense-with-zeros against compact, in one run.

    The report is written to the run folder as inference.json (result.json, written once by the run, keeps
    its own parameter and FLOP counts).

    Examples: `mtbench bench inference runs/<run id>`, `mtbench bench inference --no-latency runs/*`
    """
    from mtbench.inference import bench_inference as measure

    for run_dir in run_dirs:
        report = measure(run_dir, repeats=repeats, threads=threads, batch_sizes=(1, 16) if latency else ())
        console.print(inference_table(run_dir, report))
