"""``mtbench data …``: create, check and prepare data sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mtbench import catalog
from mtbench.cli.common import DatasetArg, LayoutOption, open_dataset, reports_errors
from mtbench.cli.progress import progress_bar
from mtbench.cli.render import console, identity_line, print_verify_report
from mtbench.errors import ConfigError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Create, check and prepare data sets.")

RootOption = Annotated[Path, typer.Option("--root", help="Top folder of the data set.")]


@app.command("synth")
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


@app.command("verify")
@reports_errors
def data_verify(
    dataset: DatasetArg,
    root: RootOption,
    layout: LayoutOption = None,
) -> None:
    """Read every sample of every split through the real reader and report problems.

    Exits 1 and names each offending file on a truncated or corrupt file, a wrong shape or dtype,
    a missing file or folder, or a label out of range.

    Example: `mtbench data verify nyuv2 --root data/nyu-synth`
    """
    from mtbench.data.verify import verify

    reader = open_dataset(dataset, root, layout)
    console.print(identity_line(reader))
    with progress_bar("verifying") as update:
        report = verify(reader, progress=update)
    print_verify_report(dataset, root, report)
    if not report.ok:
        raise typer.Exit(1)


@app.command("prepare")
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

    reader = open_dataset(dataset, source, layout)
    console.print(identity_line(reader))
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


@app.command("show")
@reports_errors
def data_show(
    dataset: DatasetArg,
    root: RootOption,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")],
    n: Annotated[int, typer.Option("--n", help="Samples to show.")] = 4,
    split: Annotated[str | None, typer.Option(help="Split (default: the first).")] = None,
    layout: LayoutOption = None,
) -> None:
    """Write a contact sheet (PNG) of a few samples with every target.

    Example: `mtbench data show nyuv2-synth --root data/nyu-synth --out nyu.png`
    """
    from mtbench.data.contact import contact_sheet

    path = contact_sheet(open_dataset(dataset, root, layout), out, split=split, n=n)
    console.print(f"wrote {path}")
