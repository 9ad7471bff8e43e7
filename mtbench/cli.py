"""The ``mtbench`` command line: a thin typer layer over library calls."""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mtbench import catalog
from mtbench.errors import ConfigError, MtbenchError

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

app = typer.Typer(
    name="mtbench",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    help="""Benchmark suite for multi-task learning with learned structured sparsity.

Examples:

* `mtbench ls tasks` — every task, its metrics and their directions
* `mtbench data synth nyuv2-synth --out data/nyu-synth` — a synthetic NYU-like set in the real layout
* `mtbench data verify nyuv2 --root data/nyu-synth` — read every sample through the real reader
* `mtbench data prepare nyuv2 --from /data/nyuv2` — convert a real copy into the local Arrow cache
* `mtbench run meta-sparsity --unseen depth` — meta-train, then evaluate seen and held-out tasks
""",
)
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Create, check and prepare data sets.")
bench_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="markdown", help="Benchmarks that print measured ratios."
)
leaderboard_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="markdown", help="Build and publish the leaderboard tables."
)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(leaderboard_app, name="leaderboard")

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn mtbench's typed errors into a readable message and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MtbenchError as error:
            err_console.print("[bold red]error:[/] " + _escape(str(error)), highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields ``update(done, total)``."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


# --- ls ---------------------------------------------------------------------------------------------


class Listing(str, Enum):
    tasks = "tasks"
    datasets = "datasets"
    methods = "methods"


PluginsOption = Annotated[
    list[Path] | None,
    typer.Option("--plugins", help="A .py file or folder of method plugins to load (repeatable). Never implicit."),
]


@app.command("ls")
@reports_errors
def ls(
    kind: Annotated[Listing, typer.Argument(help="What to list.")],
    pattern: Annotated[str | None, typer.Argument(help="Glob or substring filter on names.")] = None,
    plugins: PluginsOption = None,
) -> None:
    """List tasks, data sets or methods.

    Examples: `mtbench ls tasks`, `mtbench ls tasks depth`, `mtbench ls methods --plugins my_method.py`
    """
    if kind is Listing.tasks:
        table = Table(title="Tasks", title_justify="left")
        for column in (
            "task",
            "family",
            "title",
            "head",
            "loss",
            "metrics (↑ higher / ↓ lower is better)",
            "--unseen",
            "v",
        ):
            table.add_column(column, no_wrap=column in ("task", "family", "head"))
        from mtbench.registry import matches

        for _, spec in catalog.tasks().items():
            if not (matches(spec.key, pattern) or matches(spec.name, pattern)):
                continue
            metrics = ", ".join(f"{m.name} {m.arrow}" for m in spec.metrics)
            table.add_row(
                spec.name,
                spec.family,
                spec.title,
                f"{spec.head}×{spec.out_channels}",
                spec.loss,
                metrics,
                "yes" if spec.may_hold_out else "no",
                spec.version,
            )
    elif kind is Listing.datasets:
        from mtbench.data.cache import find_prepared

        table = Table(title="Data sets", title_justify="left")
        for column in ("dataset", "kind", "tasks (default first)", "layouts", "splits train/test", "prepared cache"):
            table.add_column(column)
        registry = catalog.datasets()
        for name in registry.names(pattern):
            spec = registry.get(name)
            others = [t.name for t in catalog.family_tasks(spec.family) if t.name not in spec.default_tasks]
            prepared = find_prepared(name)
            table.add_row(
                name,
                "[yellow]synthetic[/]" if spec.synthetic else "real",
                ", ".join(spec.default_tasks) + (" | " + ", ".join(others) if others else ""),
                "\n".join(spec.layouts),
                f"{spec.train_split}/{spec.test_split}",
                str(prepared) if prepared else "—",
            )
    else:
        from mtbench.methods import methods

        table = Table(title="Methods", title_justify="left")
        for column in ("method", "summary", "paper", "source"):
            table.add_column(column)
        registry = methods(plugins or ())
        for name in registry.names(pattern):
            info = registry.get(name)
            table.add_row(name, info.summary, info.paper or "—", _short_source(registry.source(name)))
    console.print(table)
    if not table.row_count:
        console.print(f"no {kind.value} match {pattern!r}" if pattern else f"no {kind.value} registered")


def _short_source(source: str) -> str:
    """``file /long/path/x.py (sha256 …)`` -> ``file x.py (sha256 …)``; results keep the full path."""
    if source.startswith("file "):
        path, _, rest = source[5:].partition(" (")
        return f"file {Path(path).name} ({rest}"
    return source


# --- data -------------------------------------------------------------------------------------------

DatasetArg = Annotated[str, typer.Argument(help="Data set name (`mtbench ls datasets`).")]
LayoutOption = Annotated[str | None, typer.Option(help="On-disk layout; detected when omitted.")]


@data_app.command("synth")
@reports_errors
def data_synth(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", help="Folder to create.")],
    n: Annotated[int, typer.Option("--n", help="Number of samples over all splits.")] = 1000,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    layout: Annotated[str | None, typer.Option(help="Real layout to write (default: the first).")] = None,
    height: Annotated[int | None, typer.Option(help="NYU-like: image height.")] = None,
    width: Annotated[int | None, typer.Option(help="NYU-like: image width.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Faces: image side.")] = None,
    mask_size: Annotated[int | None, typer.Option(help="Faces: mask side.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Write a synthetic stand-in in a real on-disk layout.

    Examples: `mtbench data synth nyuv2-synth --out D --n 1000`,
    `mtbench data synth celebamask-synth --out F --layout celebamask-parquet`
    """
    import time

    spec = catalog.dataset(dataset)
    if spec.generator is None:
        synthetic = [n for n in catalog.datasets().names() if catalog.dataset(n).synthetic]
        raise ConfigError(
            f"{dataset!r} is a real data set and cannot be generated",
            expected="a synthetic data set: " + ", ".join(synthetic),
            found=dataset,
            fix=f"use {spec.name}-synth, or prepare a real copy with `mtbench data prepare`",
        )
    sizes = {"height": height, "width": width, "image_size": image_size, "mask_size": mask_size}
    options = dict(spec.synth_options)
    for key, value in sizes.items():
        if value is not None:
            if key not in options:
                raise ConfigError(
                    f"--{key.replace('_', '-')} does not apply to {dataset}",
                    expected=", ".join("--" + k.replace("_", "-") for k in options),
                    found=key,
                )
            options[key] = value
    start = time.perf_counter()
    with progress_bar(f"generating {dataset}") as update:
        path = spec.generator(
            out, n=n, seed=seed, layout=layout or spec.layouts[0], overwrite=overwrite, progress=update, **options
        )
    seconds = time.perf_counter() - start
    console.print(
        f"wrote {n} synthetic samples of [bold]{dataset}[/] ({layout or spec.layouts[0]}, "
        f"{', '.join(f'{k}={v}' for k, v in options.items())}, seed {seed}) to {path} "
        f"in {seconds:.1f} s ({n / seconds:.0f} samples/s)"
    )


def _open(dataset: str, root: Path, layout: str | None) -> Any:
    from mtbench.data.layouts import open_reader

    spec = catalog.dataset(dataset)
    reader = open_reader(spec.family, root, layout)
    synthetic = reader.synthetic_manifest() is not None
    if spec.synthetic and not synthetic:
        raise ConfigError(
            f"{root} holds no synthetic-data manifest, so it is not {dataset}",
            expected="a folder written by `mtbench data synth`",
            found="a folder without mtbench-synthetic.json",
            fix=f"name the real data set instead: {spec.family}",
        )
    return reader


def _identity_line(reader: Any) -> str:
    identity = reader.identity(content=False)
    if identity.synthetic:
        gen = identity.generator or {}
        return (
            f"[yellow]SYNTHETIC[/] data set {identity.dataset} (generator {gen.get('generator')} "
            f"v{gen.get('generator_version')}, seed {gen.get('seed')}), layout {reader.layout}"
        )
    return f"real data set {identity.dataset}, layout {reader.layout}"


@data_app.command("verify")
@reports_errors
def data_verify(
    dataset: DatasetArg,
    root: Annotated[Path, typer.Option("--root", help="Top folder of the data set.")],
    layout: LayoutOption = None,
) -> None:
    """Read every sample of every split through the real reader and report problems.

    Exits 1 and names each offending file on a truncated or corrupt file, a wrong shape or dtype,
    a missing file or folder, or a label out of range.

    Example: `mtbench data verify nyuv2 --root data/nyu-synth`
    """
    from mtbench.data.verify import verify

    reader = _open(dataset, root, layout)
    console.print(_identity_line(reader))
    with progress_bar("verifying") as update:
        report = verify(reader, progress=update)
    table = Table(title=f"{dataset} at {root}", title_justify="left")
    table.add_column("split")
    table.add_column("samples", justify="right")
    for split, count in report.counts.items():
        table.add_row(split, str(count))
    console.print(table)
    console.print(f"targets checked: {', '.join(report.targets)}")
    if report.ok:
        console.print("[bold green]OK[/]: every sample read and checked")
        return
    for error in report.errors:
        err_console.print("[bold red]error:[/] " + _escape(str(error)), highlight=False)
    more = " (stopped early; there may be more)" if report.truncated else ""
    err_console.print(f"[bold red]{len(report.errors)} problem(s) found{more}[/]")
    raise typer.Exit(1)


@data_app.command("prepare")
@reports_errors
def data_prepare(
    dataset: DatasetArg,
    source: Annotated[Path, typer.Option("--from", help="Top folder of a copy in a real layout.")],
    layout: LayoutOption = None,
    cache: Annotated[Path | None, typer.Option(help="Cache root (default $MTBENCH_HOME or ~/.cache/mtbench).")] = None,
) -> None:
    """Convert a real-layout folder into the local, fingerprinted Arrow cache that training reads.

    Example: `mtbench data prepare nyuv2 --from /data/nyuv2`
    """
    from mtbench.data.cache import prepare

    reader = _open(dataset, source, layout)
    console.print(_identity_line(reader))
    if reader.synthetic_manifest() and not catalog.dataset(dataset).synthetic:
        console.print(
            f"[yellow]notice:[/] {source} is synthetic; it is prepared as "
            f"{reader.identity(content=False).dataset}, never as the real {dataset}"
        )
    with progress_bar("preparing") as update:
        prepared = prepare(reader, cache_root=cache, progress=update)
    counts = ", ".join(f"{k} {v}" for k, v in prepared.counts.items())
    console.print(
        f"prepared [bold]{prepared.identity.dataset}[/] ({counts}) at {prepared.path}\n"
        f"fingerprint sha256:{prepared.identity.fingerprint}"
    )


@data_app.command("show")
@reports_errors
def data_show(
    dataset: DatasetArg,
    root: Annotated[Path, typer.Option("--root", help="Top folder of the data set.")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    n: Annotated[int, typer.Option("--n", help="Samples to show.")] = 4,
    split: Annotated[str | None, typer.Option(help="Split (default: the first).")] = None,
    layout: LayoutOption = None,
) -> None:
    """Write a contact sheet (PNG) of a few samples with every target.

    Example: `mtbench data show nyuv2-synth --root data/nyu-synth --out nyu.png`
    """
    from mtbench.data.contact import contact_sheet

    path = contact_sheet(_open(dataset, root, layout), out, split=split, n=n)
    console.print(f"wrote {path}")


# --- bench ------------------------------------------------------------------------------------------


@bench_app.command("data")
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
        reader = _open(dataset, root, layout)
        with progress_bar("preparing the Arrow cache") as update:
            prepared = prepare(reader, cache_root=scratch / "cache", progress=update)
        cache = ArrowCacheReader(prepared.path)
        split = reader.splits()[0]
        timings = bench_loaders(reader, cache, split=split, count=n)
        table = Table(
            title=f"Loader speed: {dataset}, split {split}, all targets ({', '.join(reader.targets())}), one process",
            title_justify="left",
        )
        for column in ("loader", "samples", "seconds", "samples/s", "× raw"):
            table.add_column(column, justify="right" if column != "loader" else "left")
        base = timings[0].per_second
        for timing in timings:
            table.add_row(
                timing.name,
                str(timing.samples),
                f"{timing.seconds:.3f}",
                f"{timing.per_second:.0f}",
                f"{timing.per_second / base:.2f}",
            )
        console.print(table)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@bench_app.command("inference")
@reports_errors
def bench_inference(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders (result.json + checkpoint.pt).")],
    repeats: Annotated[int, typer.Option(help="Timed forwards per measurement (median).")] = 20,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")] = None,
    latency: Annotated[bool, typer.Option(help="Time forwards (off: parameters and FLOPs only).")] = True,
) -> None:
    """Parameters, FLOPs and CPU latency (batch 1 and 16): dense-with-zeros against compact, in one run.

    The numbers also go into the run's result.json (key `inference`).

    Examples: `mtbench bench inference runs/<run id>`, `mtbench bench inference --no-latency runs/*`
    """
    from mtbench.inference import bench_inference as measure

    for run_dir in run_dirs:
        report = measure(run_dir, repeats=repeats, threads=threads, batch_sizes=(1, 16) if latency else ())
        console.print(_inference_table(run_dir, report))


def _inference_table(run_dir: Path, report: dict[str, Any]) -> Table:
    size = report["input_size"]
    table = Table(
        title=f"Inference, {run_dir.name}: input {size[0]}×{size[1]}, heads {', '.join(report['tasks'])}"
        + (f" ({report['networks']} networks, summed)" if report.get("networks", 1) > 1 else "")
        + f", CPU, {report['threads']} thread(s)",
        title_justify="left",
    )
    for column in ("measure", "dense (zeros kept)", "compact", "compact ÷ dense"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, key in (("parameters", "params"), ("FLOPs (1 image)", "flops")):
        dense, small = report[key]["dense"], report[key]["compact"]
        table.add_row(name, f"{dense:,}", f"{small:,}", f"{small / dense:.3f}")
    for batch, timing in report["latency_ms"].items():
        for label, key in (("", "compact"), (", BN folded", "compact_bn_folded")):
            table.add_row(
                f"latency, batch {batch}{label} (ms)",
                f"{timing['dense']:.2f}",
                f"{timing[key]:.2f}",
                f"{timing[key] / timing['dense']:.3f}",
            )
    return table


@app.command("export")
@reports_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (result.json + checkpoint.pt).")],
    out: Annotated[Path, typer.Option("--out", help="Weights file (.safetensors); a .json config goes beside it.")],
    fold_bn: Annotated[bool, typer.Option(help="Fold BatchNorm into the convs (faster inference).")] = False,
) -> None:
    """Rebuild the trained network with every zeroed channel removed; save, reload and check it.

    Example: `mtbench export runs/<run id> --out model.safetensors`
    """
    from mtbench.inference import export_run

    report = export_run(run_dir, out, fold_bn=fold_bn)
    files = "; ".join(f"{weights} + {config}" for weights, config in report["files"])
    console.print(
        f"exported {', '.join(report['tasks'])} ({report['networks']} network(s)): {report['dense_params']:,} → "
        f"{report['compact_params']:,} parameters; reloaded from {files}; max |dense − compact| on random "
        f"inputs = {report['max_abs_difference']:.2e}"
    )


# --- run --------------------------------------------------------------------------------------------


def _format_lam(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return f"{value:.4g}"


def _sparkline(values: list[float]) -> str:
    if not values:
        return ""
    bars = "▁▂▃▄▅▆▇█"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = max(1, len(values) // 40)
    return "".join(bars[int((v - low) / span * (len(bars) - 1))] for v in values[::step])


def print_run(payload: dict[str, Any], front: dict[str, Any] | None = None) -> None:
    """The tables a user reads after a run."""
    from mtbench.scoring import counts_in_delta_m

    data = payload["dataset"]
    kind = "[yellow]SYNTHETIC[/]" if data["synthetic"] else "real"
    protocol = payload["protocol"]
    console.print(
        f"[bold]{payload['method']['name']}[/] on {data['name']} ({kind}), budget {protocol['budget']}, "
        f"seed {payload['seed']}; seen: {', '.join(protocol['seen'])}; "
        f"held out: {', '.join(protocol['unseen']) or 'none'}"
    )
    for role, seen in (("seen tasks", True), ("held-out tasks", False)):
        rows = [(name, task) for name, task in payload["tasks"].items() if task["seen"] is seen]
        if not rows:
            continue
        console.print(
            f"[bold]{role}[/] — meta-test: each task fine-tuned {protocol['finetune_steps']} steps from "
            f"the trained backbone (mask kept), evaluated on the {data['test_split']} split"
        )
        table = Table()
        table.add_column("task")
        table.add_column("metric")
        table.add_column("", justify="center")
        table.add_column("value", justify="right")
        for name, task in rows:
            for index, (metric, entry) in enumerate(task["metrics"].items()):
                table.add_row(
                    name if index == 0 else "",
                    metric if counts_in_delta_m(entry) else f"{metric} (not in Δm)",
                    "↑" if entry["higher_is_better"] else "↓",
                    f"{entry['value']:.4f}",
                    end_section=index == len(task["metrics"]) - 1,
                )
        console.print(table)
    lam = payload["lambda"]
    if lam["trajectory"]:
        first = lam["trajectory"][0][1]
        values = [v if not isinstance(v, list) else sum(v) / len(v) for _, v in lam["trajectory"]]
        console.print(
            f"λ: start {_format_lam(lam['start'])} → end {_format_lam(lam['end'])}   "
            f"{_sparkline(values)}" + ("   (per-layer mean shown)" if isinstance(first, list) else "")
        )
    else:
        console.print("λ: — (this method has no sparsity penalty)")
    sparsity = payload["sparsity"]
    if sparsity is not None:
        history = [h["group_sparsity"] for h in payload["history"]]
        console.print(
            f"final sparsity of the shared backbone: {100 * sparsity['group_sparsity']:.1f} % of channel "
            f"groups, {100 * sparsity['param_sparsity']:.1f} % of conv parameters   {_sparkline(history)}"
        )
    hyper = [h["lambda_grad"] for h in payload["history"] if "lambda_grad" in h]
    if hyper:
        positive = payload["history"][-1].get("lambda_grad_positive")
        console.print(
            f"λ's meta-gradient ∂L_Q/∂λ: positive (pushing λ down) on {100 * positive:.0f} % of the steps; "
            f"logged values median {sorted(hyper)[len(hyper) // 2]:+.3g}   {_sparkline(hyper)}"
        )
    accounting = payload.get("inference")
    if accounting and sparsity is not None and accounting["params"]["dense"]:
        console.print(
            f"compact network (zeroed channels removed): {accounting['params']['compact'] / accounting['params']['dense']:.3f}× "
            f"the parameters, {accounting['flops']['compact'] / max(accounting['flops']['dense'], 1):.3f}× the FLOPs "
            f"of the dense one ({accounting['params']['compact']:,} params)"
        )
    if front is not None:
        unseen = "" if front["unseen"] is None else f", held-out {front['unseen']:+.2f} %"
        console.print(
            f"fixed-λ front at {front['sparsity_pct']:.1f} % sparsity ({front['variants']} stored λ values): "
            f"Δm seen {front['seen']:+.2f} %{unseen} — compare with this run's Δm below"
        )
    delta = payload.get("delta_m")
    if delta and "unavailable" in delta:
        console.print(f"Δm: not available ({delta['unavailable'].splitlines()[0]})")
    elif delta and delta["reference_run"] == payload["run_id"]:
        console.print(f"Δm: this run is the {delta['reference_method']} reference (Δm = 0 by definition)")
    elif delta:
        from mtbench.scoring import ALL_METRICS, PER_TASK

        console.print(
            f"Δm vs {delta['reference_method']} (same data, protocol and seed; positive = better than the "
            f"reference; conventions: {ALL_METRICS} | {PER_TASK}):"
        )
        for role, label in (("seen", "seen tasks"), ("unseen", "held-out tasks")):
            if role in delta:
                console.print(f"  {label}: {delta[role][ALL_METRICS]:+.2f} % | {delta[role][PER_TASK]:+.2f} %")
    timings = payload["timings"]
    console.print(
        f"wall time: training {timings['train_seconds']:.1f} s, meta-test {timings['meta_test_seconds']:.1f} s, "
        f"total {timings['total_seconds']:.1f} s on {payload['environment']['device']}"
    )
    console.print(
        f"result: {payload['_path']} (stored as {payload['_stored']}); "
        f"per-layer sparsity picture: {Path(payload['_path']).parent / 'sparsity.png'}"
    )


@contextmanager
def run_progress(description: str) -> Iterator[Callable[..., None]]:
    """Progress bar with the latest loss, λ and sparsity."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task(description, total=None, info="")

        def update(done: int, total: int, info: dict[str, Any] | None = None) -> None:
            fields = []
            if info:
                if "loss" in info:
                    fields.append(f"loss {info['loss']:.3f}")
                if "lambda" in info:
                    fields.append(f"λ {_format_lam(info['lambda'])}")
                if "group_sparsity" in info:
                    fields.append(f"sparsity {100 * info['group_sparsity']:.0f}%")
            progress.update(task, completed=done, total=total, info="  ".join(fields))

        yield update


@app.command("run")
@reports_errors
def run(
    method: Annotated[str, typer.Argument(help="Method name (`mtbench ls methods`).")],
    dataset: Annotated[
        str | None,
        typer.Option(help="Data set. Default: a prepared real nyuv2, else the synthetic nyuv2-synth (with a notice)."),
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Read this folder (any supported layout) directly.")] = None,
    unseen: Annotated[list[str] | None, typer.Option(help="Task held out from training (repeatable).")] = None,
    tasks: Annotated[list[str] | None, typer.Option(help="Seen tasks (repeatable); default: the data set's.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and episodes.")] = 0,
    budget: Annotated[str, typer.Option(help="smoke (seconds) | quick (CPU minutes) | paper (GPU).")] = "quick",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Method option key=value (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<run id>).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps (Apple GPUs).")] = "auto",
    results: Annotated[Path | None, typer.Option(help="Results store (default $MTBENCH_RESULTS or ./results).")] = None,
    reference: Annotated[
        bool,
        typer.Option(
            help="Use the stl reference for Δm, trained once if not stored yet (into OUT-stl-reference beside "
            "--out OUT; its time is reported apart from the total)."
        ),
    ] = True,
    plugins: PluginsOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--fresh",
            help="Training writes a checkpoint (OUT/resume.pt; without --out runs/.resume/METHOD-seedN-DIGEST/) "
            "every 100 steps and after the last; it is removed once result.json is written. --resume (default): "
            "a run whose checkpoint is there and of this same configuration (method, --set options, data "
            "fingerprint, protocol, seed, device) continues from its step, with the same final numbers as an "
            "uninterrupted run; a checkpoint of another configuration stops the run with an error. --fresh: "
            "remove the checkpoint there, whatever it holds, and train from step 0.",
        ),
    ] = True,
) -> None:
    """(Meta-)train METHOD on the seen tasks, then meta-test every seen and held-out task.

    Examples: `mtbench run meta-sparsity --unseen depth`,
    `mtbench run fixed-lambda --unseen depth --set lam=0.5`,
    `mtbench run meta-sparsity --dataset celebamask-synth --unseen smiling --budget smoke`
    """
    from mtbench.results import default_results_dir
    from mtbench.runner import RunRequest, execute, front_at, parse_set

    request = RunRequest(
        method=method,
        dataset=dataset,
        data_root=data_root,
        unseen=tuple(unseen or ()),
        tasks=tuple(tasks) if tasks else None,
        seed=seed,
        budget=budget,
        overrides=parse_set(set_ or ()),
        out=out,
        device=device,
        plugins=tuple(plugins or ()),
        results=results,
        reference=reference,
        resume=resume,
    )
    payload = execute(
        request, notice=lambda text: err_console.print(f"[yellow]notice:[/] {_escape(text)}"), progress=run_progress
    )
    sparse = payload["lambda"]["start"] not in (None, 0.0) or (payload.get("sparsity") or {}).get("group_sparsity", 0) > 0
    print_run(payload, front_at(payload, results or default_results_dir()) if sparse else None)
    timings = payload["timings"]
    if timings.get("reference_seconds"):
        what = "trained first" if timings.get("reference_trained") else "waited for (a concurrent run trained it)"
        console.print(f"reference stl {what}: {timings['reference_seconds']:.1f} s (not in the total above)")


# --- leaderboard ------------------------------------------------------------------------------------

LeaderboardDir = Annotated[Path, typer.Option("--out", help="Leaderboard folder.")]


@leaderboard_app.command("build")
@reports_errors
def leaderboard_build(
    results: Annotated[
        Path | None, typer.Option(help="Result files to tabulate (default: leaderboard/results).")
    ] = None,
    out: LeaderboardDir = Path("leaderboard"),
) -> None:
    """Regenerate the Markdown, CSV and HTML tables, one per data set and protocol.

    Every result file is checked first (readable, known schema, well-formed, safe names); a results folder
    with a MANIFEST.json (the leaderboard's own, written by `publish`) must match it, so a result changed
    or added by hand is refused. On any error nothing changes. The new tables replace the old ones in one
    atomic swap: the folder holds the complete old set or the complete new set, even if interrupted.

    Example: `mtbench leaderboard build`
    """
    from mtbench.leaderboard import build

    written = build(results or out / "results", out)
    console.print(f"wrote {len(written)} files under {out}/ (index: {out / 'README.md'})")


@leaderboard_app.command("publish")
@reports_errors
def leaderboard_publish(
    runs: Annotated[
        list[Path] | None, typer.Argument(help="Run folders (or result.json files).", show_default=False)
    ] = None,
    out: LeaderboardDir = Path("leaderboard"),
    record_existing: Annotated[
        bool,
        typer.Option(
            "--record-existing",
            help="Accept the result files already in leaderboard/results as they are now and record all of "
            "them in results/MANIFEST.json (a store without a manifest, or a result edited or removed on "
            "purpose). Check them first, e.g. with `git diff leaderboard/results`.",
        ),
    ] = False,
) -> None:
    """Copy selected runs' result files into leaderboard/results/, record their hashes, rebuild the tables.

    Each input and the results already published are checked before anything is written. The SHA-256 of
    each published result goes into leaderboard/results/MANIFEST.json; `build` refuses a result that does
    not match it.

    Examples: `mtbench leaderboard publish runs/2026*-meta-sparsity-*`,
    `mtbench leaderboard publish --record-existing` (record the committed results in the manifest)
    """
    from mtbench.leaderboard import publish

    stored = publish(runs or [], out, record_existing=record_existing)
    recorded = " and recorded the existing results" if record_existing else ""
    console.print(
        f"published {len(stored)} result(s) into {out / 'results'}{recorded}; manifest "
        f"{out / 'results' / 'MANIFEST.json'}; rebuilt the tables"
    )


# --- sweep ------------------------------------------------------------------------------------------


@app.command("sweep")
@reports_errors
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML); examples in leaderboard/specs/.")],
    results: Annotated[
        Path | None, typer.Option(help="Results store the driver writes (default $MTBENCH_RESULTS or ./results).")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to use (HEAD:6379, or auto); default $RAY_ADDRESS, else a local instance."),
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance (default: all cores).")] = None,
    cpus_per_cell: Annotated[int, typer.Option(help="CPUs (and torch threads) per cell.")] = 1,
    gpus_per_cell: Annotated[
        float | None, typer.Option(help="GPUs per cell (default: 1 for paper-budget cells, else 0).")
    ] = None,
    logs: Annotated[Path, typer.Option(help="Folder for the logs of failed cells.")] = Path("sweep-logs"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and what is stored; run nothing.")] = False,
) -> None:
    """Run a grid of `mtbench run`s (methods × options × data sets × held-out tasks × budgets × seeds) on Ray.

    Each cell is one `mtbench run` subprocess in a Ray task (one CPU and one torch thread each; a GPU each
    for the paper budget); stl references run first; the driver writes every result into --results, and a
    cell already stored there is skipped, so a killed sweep resumes. Exits 1 if any cell failed.

    Spec keys: `schema_version = 1`, `budgets = [...]`, `seeds = [...]`, `[[datasets]]` with `name`,
    `unseen = [...]` and optional `data_root` (relative to the spec), `[methods.NAME]` with
    `option = value` or `option = [grid]` (or `[[methods.NAME]]` for several grids).

    Examples: `mtbench sweep leaderboard/specs/sparsity-quick.toml --results results`,
    `mtbench sweep SPEC --address HEAD:6379`
    """
    from mtbench.results import default_results_dir
    from mtbench.sweep import describe, load_spec, print_report, run_sweep

    loaded = load_spec(spec)
    store = results or default_results_dir()
    if dry_run:
        cells = describe(loaded, store)
        for cell, stored in cells:
            console.print(f"{'stored ' if stored else 'to run '} {cell.label}", highlight=False, markup=False)
        stored_count = sum(stored for _, stored in cells)
        console.print(f"{len(cells)} cells: {len(cells) - stored_count} to run, {stored_count} stored in {store}")
        return
    report = run_sweep(
        loaded,
        store,
        address=address,
        num_cpus=num_cpus,
        cpus_per_cell=cpus_per_cell,
        gpus_per_cell=gpus_per_cell,
        logs_dir=logs,
        console=err_console,
    )
    print_report(report, console, err_console)
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
