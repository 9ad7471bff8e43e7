"""Everything the commands print beyond one-line messages: the consoles, tables and run summaries."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from mtbench import catalog

if TYPE_CHECKING:  # the runner imports torch: only for the annotations
    from mtbench.leaderboard.front import FrontReading
    from mtbench.recipe import Executed
    from mtbench.request import RunPlan
    from mtbench.result import Accounting

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def print_error(error: Exception) -> None:
    """``error: …`` on stderr, the message printed as written (no markup, no highlighting)."""
    err_console.print("[bold red]error:[/] " + escape(str(error)), highlight=False)


def print_interrupted(text: str) -> None:
    err_console.print(f"[bold yellow]stopped:[/] {escape(text)}", highlight=False)


def print_notice(text: str) -> None:
    err_console.print(f"[yellow]notice:[/] {escape(text)}")


# --- ls ---------------------------------------------------------------------------------------------


def tasks_table(specs: Iterable[Any]) -> Table:
    table = Table(title="Tasks", title_justify="left")
    metrics = "metrics (↑ higher / ↓ lower is better)"
    for column in ("task", "family", "title", "head", "loss", metrics, "--unseen", "v"):
        table.add_column(column, no_wrap=column in ("task", "family", "head"))
    for spec in specs:
        table.add_row(
            spec.name,
            spec.family,
            spec.title,
            f"{spec.head}×{spec.out_channels}",
            spec.loss,
            ", ".join(f"{m.name} {m.arrow}" for m in spec.metrics),
            "yes" if spec.may_hold_out else "no",
            spec.version,
        )
    return table


def kinds_table(registry: Any, names: Iterable[str]) -> Table:
    """One row a task kind: its head, loss, metrics and what its targets are."""
    table = Table(title="Task kinds", title_justify="left")
    for column in ("kind", "head", "loss", "metrics", "target dtype (cached)", "ignore", "drawn as", "source"):
        table.add_column(column, no_wrap=column in ("kind", "head"))
    for name in names:
        kind = registry.get(name)
        table.add_row(
            name,
            f"{kind.head}×{kind.out_channels or 'classes'}",
            kind.loss_name,
            ", ".join(f"{m.name} {m.arrow}" for m in kind.metrics),
            kind.dtype + (f" ({kind.cache_dtype})" if kind.cache_dtype else ""),
            "—" if kind.ignore is None else f"{kind.ignore:g}",
            kind.preview if isinstance(kind.preview, str) else getattr(kind.preview, "__name__", "a function"),
            _short_source(registry.source(name)),
        )
    return table


def layouts_table(registry: Any, names: Iterable[str]) -> Table:
    """One row an on-disk layout: its family, what it holds and where its reader comes from."""
    table = Table(title="On-disk layouts (detected in this order within a family)", title_justify="left")
    for column in ("layout", "family", "title", "expected files", "targets", "source"):
        table.add_column(column, no_wrap=column in ("layout", "family"))
    for name in names:
        reader = registry.get(name)
        targets = list(reader.target_sources)
        shown = ", ".join(targets[:6]) + (f" … ({len(targets)})" if len(targets) > 6 else "")
        table.add_row(
            name,
            "every" if reader.family == "*" else reader.family,
            reader.title,
            reader.describe(),
            shown or "those of its source",
            _short_source(registry.source(name)),
        )
    return table


def datasets_table(specs: Iterable[Any], prepared: dict[str, Path | None]) -> Table:
    """One row a data set; ``prepared`` maps its name to its prepared cache, if any."""
    from mtbench.data.layouts import layouts_of

    table = Table(title="Data sets", title_justify="left")
    for column in ("dataset", "kind", "tasks (default first)", "layouts", "splits train/test", "prepared cache"):
        table.add_column(column)
    for spec in specs:
        others = [t.name for t in catalog.family_tasks(spec.family) if t.name not in spec.default_tasks]
        cache = prepared.get(spec.name)
        table.add_row(
            spec.name,
            "[yellow]synthetic[/]" if spec.synthetic else "real",
            ", ".join(spec.default_tasks) + (" | " + ", ".join(others) if others else ""),
            "\n".join(c.layout for c in layouts_of(spec.family) if c.family == spec.family),
            f"{spec.train_split}/{spec.test_split}",
            str(cache) if cache else "—",
        )
    return table


def methods_table(registry: Any, names: Iterable[str]) -> Table:
    table = Table(title="Methods", title_justify="left")
    for column in ("method", "family", "summary", "paper", "source"):
        table.add_column(column)
    for name in names:
        info = registry.get(name)
        table.add_row(name, info.family, info.summary, info.paper or "—", _short_source(registry.source(name)))
    return table


def _short_source(source: str) -> str:
    """``file /long/path/x.py (sha256 …)`` -> ``file x.py (sha256 …)``; results keep the full path."""
    if source.startswith("file "):
        path, _, rest = source[5:].partition(" (")
        return f"file {Path(path).name} ({rest}"
    return source


# --- data and bench ---------------------------------------------------------------------------------


def identity_line(reader: Any) -> str:
    """Which data set a reader holds: real, or synthetic with its generator and seed."""
    identity = reader.identity(content=False)
    if identity.synthetic:
        gen = identity.generator or {}
        return (
            f"[yellow]SYNTHETIC[/] data set {identity.dataset} (generator {gen.get('generator')} "
            f"v{gen.get('generator_version')}, seed {gen.get('seed')}), layout {reader.layout}"
        )
    return f"real data set {identity.dataset}, layout {reader.layout}"


def print_verify_report(dataset: str, root: Path, report: Any) -> None:
    """Samples per split and the targets checked; then OK, or every problem found (on stderr)."""
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
        print_error(error)
    more = " (stopped early; there may be more)" if report.truncated else ""
    err_console.print(f"[bold red]{len(report.errors)} problem(s) found{more}[/]")


def loader_table(dataset: str, split: str, targets: list[str], timings: list[Any]) -> Table:
    table = Table(
        title=f"Loader speed: {dataset}, split {split}, all targets ({', '.join(targets)}), one process",
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
    return table


def inference_table(run_dir: Path, report: Accounting) -> RenderableType:
    """Parameters and FLOPs, dense against compact; and where timed, `latency_table`."""
    size = report.input_size or ("?", "?")
    table = Table(
        title=f"Inference, {run_dir.name}: input {size[0]}×{size[1]}, heads {', '.join(report.tasks or ())}"
        + (f" ({report.networks} networks, summed)" if (report.networks or 1) > 1 else "")
        + f", CPU, {report.threads} thread(s)",
        title_justify="left",
    )
    for column in ("measure", "dense (zeros kept)", "compact", "compact ÷ dense"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, counts in (("parameters", report.params), ("FLOPs (1 image)", report.flops)):
        table.add_row(name, f"{counts.dense:,}", f"{counts.compact:,}", f"{counts.compact / counts.dense:.3f}")
    return Group(table, latency_table(report)) if report.latency_ms else table


def _spread(low_high: tuple[float, float] | None) -> str:
    return f"{low_high[0]:.2f}–{low_high[1]:.2f}" if low_high else "—"


def latency_table(report: Accounting) -> Table:
    """Per batch size: the dense network, the compact one and every inference path of the folded one — median ms,
    interquartile range, ratio to the dense median and that ratio ÷ the FLOP ratio (1.0: as fast as its FLOPs)."""
    flop_ratio = report.flops.ratio
    rounds = {timing.rounds for timing in (report.latency_ms or {}).values() if timing.rounds}
    table = Table(
        title=f"Latency, CPU, {report.threads} thread(s)"
        + (f": median of {', '.join(map(str, sorted(rounds)))} interleaved rounds, spread = interquartile range"
           if rounds else " (median)")
        + (f"; FLOP ratio compact ÷ dense = {flop_ratio:.3f}" if flop_ratio else ""),
        title_justify="left",
    )
    for column in ("latency", "network / path", "median (ms)", "spread (ms)", "÷ dense", "÷ FLOP ratio",
                   "max |Δ| vs dense", "note"):
        table.add_column(column, justify="left" if column in ("latency", "network / path", "note") else "right")

    def ratios(value: float, dense: float) -> tuple[str, str]:
        ratio = value / dense if dense else None
        if ratio is None:
            return "—", "—"
        return f"{ratio:.3f}", f"{ratio / flop_ratio:.2f}×" if flop_ratio else "—"

    for batch, timing in (report.latency_ms or {}).items():
        label = f"latency, batch {batch}"
        table.add_row(label, "dense (zeros kept)", f"{timing.dense:.2f}", _spread(timing.dense_spread), "1.000",
                      "—", "—", "")
        table.add_row("", "compact, BN kept", f"{timing.compact:.2f}", _spread(timing.compact_spread),
                      *ratios(timing.compact, timing.dense), "—", "")
        if timing.paths is None:  # written before inference paths were measured
            table.add_row("", "compact, BN folded", f"{timing.compact_bn_folded:.2f}", "—",
                          *ratios(timing.compact_bn_folded, timing.dense), "—", "")
        for name, path in (timing.paths or {}).items():
            if path.status != "ok" or path.median_ms is None:
                note = ("[red]wrong outputs: " if path.status == "mismatch" else "[yellow]unavailable: ") + escape(
                    path.reason or path.status
                )
                difference = "—" if path.max_abs_difference is None else f"{path.max_abs_difference:.1e}"
                table.add_row("", f"folded, {name}", "—", "—", "—", "—", difference, note)
                continue
            low_high = (path.low_ms, path.high_ms) if path.low_ms is not None and path.high_ms is not None else None
            table.add_row("", f"folded, {name}", f"{path.median_ms:.2f}", _spread(low_high),
                          *ratios(path.median_ms, timing.dense),
                          "—" if path.max_abs_difference is None else f"{path.max_abs_difference:.1e}", "")
        table.add_section()
    return table


# --- run --------------------------------------------------------------------------------------------


def format_lam(value: Any) -> str:
    """λ as a number, a per-layer list, or — when the method has none."""
    if value is None:
        return "—"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" for v in value) + "]"
    return f"{value:.4g}"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    bars = "▁▂▃▄▅▆▇█"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = max(1, len(values) // 40)
    return "".join(bars[int((v - low) / span * (len(bars) - 1))] for v in values[::step])


def run_progress_fields(info: dict[str, Any]) -> str:
    """The latest loss, λ and sparsity that training reports, for the progress bar."""
    fields = []
    if "loss" in info:
        fields.append(f"loss {info['loss']:.3f}")
    if "lambda" in info:
        fields.append(f"λ {format_lam(info['lambda'])}")
    if "group_sparsity" in info:
        fields.append(f"sparsity {100 * info['group_sparsity']:.0f}%")
    return "  ".join(fields)


def print_run(done: Executed, front: FrontReading | None = None) -> None:
    """The tables and lines a user reads after a run; ``front``: the fixed-λ front at its sparsity."""
    result = done.result
    data, protocol = result.dataset, result.protocol
    kind = "[yellow]SYNTHETIC[/]" if data.synthetic else "real"
    console.print(
        f"[bold]{result.method.name}[/] on {data.name} ({kind}), budget {protocol.budget}, "
        f"seed {result.seed}; seen: {', '.join(protocol.seen)}; held out: {', '.join(protocol.unseen) or 'none'}"
    )
    evaluation = result.evaluation
    if evaluation is not None:
        recal = (
            f"BatchNorm statistics recomputed on {evaluation.bn_recalibration_batches} training batches before "
            "every evaluation" if evaluation.bn_recalibration_batches else "BatchNorm statistics NOT recomputed"
        )
        splits = evaluation.splits
        console.print(
            f"protocol: {recal}; trained on {splits['train']:,} samples, choices on {splits['val']:,} validation "
            f"samples, scored on {splits['test']:,} test samples (the data set's {data.test_split!r} split)"
        )
    for role, seen in (("seen tasks", True), ("held-out tasks", False)):
        rows = [(name, task) for name, task in result.tasks.items() if task.seen is seen]
        if not rows:
            continue
        console.print(
            f"[bold]{role}[/] on the test split — "
            + ("joint: the trained multi-task network as it is; " if seen else "")
            + f"adapted: fine-tuned {protocol.budget_settings.finetune_steps} steps per task from the trained backbone "
            "(mask kept); trivial: the prediction made without the image (training mean / majority)"
        )
        table = Table()
        table.add_column("task")
        table.add_column("metric")
        table.add_column("", justify="center")
        if seen:
            table.add_column("joint", justify="right")
        table.add_column("adapted", justify="right")
        table.add_column("trivial", justify="right")
        for name, task in rows:
            trivial = (task.trivial or {}).get("test", {})
            for index, (name_of_metric, metric) in enumerate(task.metrics.items()):
                joint = task.joint[name_of_metric].value if task.joint else None
                cells = [f"{joint:.4f}" if joint is not None else "—"] if seen else []
                table.add_row(
                    name if index == 0 else "",
                    name_of_metric if metric.in_delta_m else f"{name_of_metric} (not in Δm)",
                    "↑" if metric.higher_is_better else "↓",
                    *cells,
                    f"{metric.value:.4f}",
                    f"{trivial[name_of_metric]:.4f}" if name_of_metric in trivial else "—",
                    end_section=index == len(task.metrics) - 1,
                )
        console.print(table)
    lam = result.lam
    if lam.trajectory:
        first = lam.trajectory[0][1]
        values = [v if not isinstance(v, list) else sum(v) / len(v) for _, v in lam.trajectory]
        console.print(
            f"λ: start {format_lam(lam.start)} → end {format_lam(lam.end)}   "
            f"{sparkline(values)}" + ("   (per-layer mean shown)" if isinstance(first, list) else "")
        )
    else:
        console.print("λ: — (this method has no sparsity penalty)")
    sparsity = result.sparsity
    if sparsity is not None and sparsity.group_sparsity is not None:
        history = [h.group_sparsity for h in result.history if h.group_sparsity is not None]
        console.print(
            f"final sparsity of the shared backbone: {100 * sparsity.group_sparsity:.1f} % of channel "
            f"groups, {100 * (sparsity.param_sparsity or 0.0):.1f} % of conv parameters   {sparkline(history)}"
        )
    if sparsity is not None and sparsity.dead_layers:
        branches = ", ".join(sparsity.dead_branches)
        branches = f"; residual branch(es) switched off: {branches}" if branches else ""
        console.print(
            f"[yellow]dead layers[/] (every channel group zero): {', '.join(sparsity.dead_layers)}{branches}"
        )
    cost = result.training_cost
    if cost is not None and cost.counted_steps:
        console.print(
            f"training compute: {cost.flops / 1e9:,.1f} GFLOP ({cost.flops_per_step / 1e9:.3g} GFLOP per step, "
            f"counted on {cost.counted_steps} of {cost.steps} steps), {cost.seconds or 0:.1f} s"
        )
    hyper = [h.lambda_grad for h in result.history if h.lambda_grad is not None]
    if hyper:
        # the last share logged: a method may stop learning λ before the end (a final cut to a budget)
        shares = [h.lambda_grad_positive for h in result.history if h.lambda_grad_positive is not None]
        positive = shares[-1] if shares else 0.0
        console.print(
            f"λ's meta-gradient ∂L_Q/∂λ: positive (pushing λ down) on {100 * positive:.0f} % of the steps; "
            f"logged values median {sorted(hyper)[len(hyper) // 2]:+.3g}   {sparkline(hyper)}"
        )
    accounting = result.inference
    if accounting and sparsity is not None and accounting.params.dense:
        params, flops = accounting.params, accounting.flops
        console.print(
            f"compact network (zeroed channels removed): {params.compact / params.dense:.3f}× "
            f"the parameters, {flops.compact / max(flops.dense, 1):.3f}× the FLOPs "
            f"of the dense one ({params.compact:,} params)"
        )
    if front is not None:
        unseen = "" if front.unseen is None else f", held-out {front.unseen:+.2f} %"
        console.print(
            f"fixed-λ front at {front.at:.1f} on {front.axis} ({front.variants} stored λ values): "
            f"Δm {front.score} {front.seen:+.2f} %{unseen} against stl's mean over seeds — compare with this "
            "run's Δm below"
        )
    delta = result.delta_m
    if delta and delta.unavailable:
        console.print(f"Δm: not available ({delta.unavailable.splitlines()[0]})")
    elif delta and delta.reference_run == result.run_id:
        console.print(f"Δm: this run is the {delta.reference_method} reference (Δm = 0 by definition)")
    elif delta:
        from mtbench.result import ALL_METRICS, PER_TASK

        console.print(
            f"Δm vs {delta.reference_method} (same data, protocol and seed; positive = better than the "
            f"reference; conventions: {ALL_METRICS} | {PER_TASK}):"
        )
        for role, label in (
            ("joint", "seen tasks, joint (the trained multi-task network)"),
            ("seen", "seen tasks, adapted (fine-tuned per task)"),
            ("unseen", "held-out tasks, adapted"),
        ):
            overall, per_task = delta.overall(role), delta.per_task(role)
            if overall is not None and per_task is not None:
                console.print(f"  {label}: {overall:+.2f} % | {per_task:+.2f} %")
    timings = result.timings
    console.print(
        f"wall time: training {timings.train_seconds:.1f} s, scoring (recalibration, joint, meta-test, trivial) "
        f"{timings.meta_test_seconds:.1f} s, "
        f"total {timings.total_seconds:.1f} s on {result.environment.device}"
    )
    console.print(
        f"result: {done.result_file} (stored as {done.stored}); "
        f"per-layer sparsity picture: {done.run_dir / 'sparsity.png'}"
    )
    if timings.reference_seconds:
        what = "trained first" if timings.reference_trained else "waited for (a concurrent run trained it)"
        console.print(f"reference stl {what}: {timings.reference_seconds:.1f} s (not in the total above)")


def print_plan(plan: RunPlan) -> None:
    """What `mtbench run --dry-run` prints: the checked plan, nothing trained."""
    table = Table(title="mtbench run --dry-run: the plan (nothing generated, loaded or trained)", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for what, value in plan.describe():
        table.add_row(what, escape(value))
    console.print(table)
