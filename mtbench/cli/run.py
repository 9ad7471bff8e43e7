"""``mtbench run``: train one method on one data set, meta-test every task, print the summary."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from mtbench.cli.common import PluginsOption, reports_errors
from mtbench.cli.progress import progress_bar
from mtbench.cli.render import print_notice, print_plan, print_run, run_progress_fields
from mtbench.presets import budget_help

BUDGET_HELP = budget_help()


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
    budget: Annotated[str, typer.Option(help=BUDGET_HELP)] = "quick",
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
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic",
            help="Deterministic kernels (torch.use_deterministic_algorithms; no cuDNN autotuning, no fused "
            "Adam). Default: by device, on for the CPU (exact numbers per machine and thread count), off on "
            "CUDA (cudnn.benchmark and fused Adam instead). The result's environment records which.",
            show_default=False,
        ),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the training forwards with torch.compile (networks of the MTL methods; the meta "
            "learners' per-step clones and the meta-test run eagerly). Off by default; `mtbench bench train "
            "--compile` measures whether it pays.",
        ),
    ] = False,
    bn_batches: Annotated[
        int | None,
        typer.Option(
            "--bn-batches",
            help="Training batches over which BatchNorm statistics are recomputed before every evaluation "
            "(default: the budget's; 0 scores with the statistics training left, the ablation). Part of the "
            "protocol: runs with another count never share a table.",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads of torch (default: all cores). The published tables use 1, and a seed's numbers "
            "depend on the count: --threads 1 reproduces them exactly. Recorded in the result.",
            show_default=False,
        ),
    ] = None,
    data_mode: Annotated[
        str,
        typer.Option(
            "--data",
            help="How the splits are held: memory (compact tensors), stream (read batch by batch by DataLoader "
            "workers from the data set, the Arrow cache for real data: memory does not grow with the data set) "
            "or auto (stream when the in-memory estimate exceeds --memory-budget). Both give the same numbers; "
            "the result's environment.data records which ran and why.",
        ),
    ] = "auto",
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget",
            help="GiB the in-memory data may take before --data auto streams (default: half of this machine's "
            "memory).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="DataLoader worker processes per stream when streaming (default: half the cores on CUDA, at "
            "most 8; 1 on the CPU).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Check the options and print the plan (method and config, data, tasks, budget, device, "
            "folders); generate, load and train nothing.",
        ),
    ] = False,
) -> None:
    """(Meta-)train METHOD on the seen tasks, then meta-test every seen and held-out task.

    Examples: `mtbench run meta-sparsity --unseen depth`,
    `mtbench run fixed-lambda --unseen depth --set lam=0.5`,
    `mtbench run meta-sparsity --dataset celebamask-synth --unseen smiling --budget smoke`,
    `mtbench run meta-sparsity --unseen depth --dry-run`,
    `mtbench run ew --unseen depth --seed 3 --threads 1` (a published table's cell, to the last digit),
    `mtbench run ew --dataset celebamask --unseen smiling --budget paper --data stream --workers 8`
    """
    from mtbench.leaderboard.front import front_at
    from mtbench.overrides import parse_set
    from mtbench.results import default_results_dir
    from mtbench.runner import RunRequest, execute_plan, plan

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
        deterministic=deterministic,
        compile=compile_,
        bn_batches=bn_batches,
        threads=threads,
        data_mode=data_mode,
        memory_budget_gib=memory_budget,
        loader_workers=workers,
    )
    the_plan = plan(request, notice=print_notice)
    if dry_run:
        print_plan(the_plan)
        return
    progress = functools.partial(progress_bar, fields=run_progress_fields)
    done = execute_plan(the_plan, notice=print_notice, progress=progress)
    result = done.result
    group_sparsity = result.sparsity.group_sparsity if result.sparsity else None
    sparse = result.lam.start not in (None, 0.0) or (group_sparsity or 0) > 0
    print_run(done, front_at(result, results or default_results_dir()) if sparse else None)
