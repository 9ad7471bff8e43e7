"""``mtbench export``: the trained network without its zeroed channels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtbench.cli.common import reports_errors
from mtbench.cli.render import console


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
