"""``mtbench data …``: create, check and prepare data sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mtbench import catalog
from mtbench.cli.common import DatasetArg, LayoutOption, open_dataset, reports_errors
from mtbench.cli.progress import progress_bar
from mtbench.cli.render import console, err_console, identity_line, print_error, print_verify_report
from mtbench.errors import ConfigError, DatasetNotFoundError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Create, check and prepare data sets.")

RootOption = Annotated[Path, typer.Option("--root", help="Top folder of the data set.")]
CacheOption = Annotated[Path | None, typer.Option(help="Cache root (default $MTBENCH_HOME or ~/.cache/mtbench).")]


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
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="Top folder of the data set, or a cache folder; omitted: every cache of DATASET that mtbench keeps.",
        ),
    ] = None,
    layout: LayoutOption = None,
    cache: CacheOption = None,
) -> None:
    """Read every sample of every split through the real reader and report problems; or check caches.

    Exits 1 and names each offending file on a truncated or corrupt file, a wrong shape or dtype,
    a missing file or folder, or a label out of range. A cache (`--root` at a cache folder, or without
    `--root` every cache of DATASET under the cache root, prepared or made by runs from a synthetic set)
    is first checked against the checksums recorded when it was written: each damaged, missing or stray
    file is named, and the command that rebuilds it.

    Examples: `mtbench data verify nyuv2 --root data/nyu-synth`, `mtbench data verify nyuv2-synth`
    """
    from mtbench.data.cache import CACHE_META, caches_of
    from mtbench.data.verify import verify

    if root is None:
        entries = caches_of(catalog.dataset(dataset).name, cache)  # an unknown name: refused with suggestions
        if not entries:
            raise _no_cache(dataset, cache, "verify")
        if not all([_report_cache(entry.path) for entry in entries]):  # every cache checked, not the first bad one
            raise typer.Exit(1)
        return
    if (root / CACHE_META).is_file() and not _report_cache(root):
        raise typer.Exit(1)
    reader = open_dataset(dataset, root, layout)
    console.print(identity_line(reader))
    with progress_bar("verifying") as update:
        report = verify(reader, progress=update)
    print_verify_report(dataset, root, report)
    if not report.ok:
        raise typer.Exit(1)


def _no_cache(dataset: str, cache: Path | None, verb: str) -> DatasetNotFoundError:
    from mtbench.data.cache import mtbench_home

    synthetic = catalog.dataset(dataset).synthetic
    return DatasetNotFoundError(
        f"no cache of {dataset} to {verb}",
        expected=f"a cache under {cache or mtbench_home()} (prepared, or made by a run)",
        found="none",
        fix=f"prepare one with `mtbench data prepare {dataset} --from DIR`"
        + (" (a run prepares a synthetic set's cache on its own)" if synthetic else "")
        + ("; or name a folder with --root" if verb == "verify" else ""),
    )


def _report_cache(path: Path) -> bool:
    """Check the cache at ``path`` against its checksums; print the outcome, each problem and the repair."""
    from mtbench.data.cache import cache_repair, check_cache

    start = time.perf_counter()
    check = check_cache(path)
    seconds = time.perf_counter() - start
    if check.ok:
        console.print(
            f"[green]OK[/]: cache {path}: {check.files} files, {check.nbytes / 2**20:.1f} MiB, every checksum "
            f"matches ({seconds:.2f} s)",
            highlight=False,
        )
        return True
    for problem in check.problems:
        print_error(problem.error())
    err_console.print(
        f"[bold red]cache {path}: {len(check.problems)} problem(s)[/]\nfix: {escape(cache_repair(path))}",
        highlight=False,
    )
    return False


@app.command("prepare")
@reports_errors
def data_prepare(
    dataset: DatasetArg,
    source: Annotated[
        Path | None, typer.Option("--from", help="Top folder of a copy in a real layout (not with --rebuild).")
    ] = None,
    layout: LayoutOption = None,
    cache: CacheOption = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Rebuild each cache of DATASET under the cache root that fails its checksums (or has none) from the "
            "source it was prepared from; each new cache is built beside the old one and swapped in. Sound caches "
            "are kept.",
        ),
    ] = False,
) -> None:
    """Convert a real-layout folder into the local, fingerprinted Arrow cache that training reads.

    Every file of the cache is checksummed; a run checks them when it opens the cache. `--rebuild` repairs
    damaged caches (those `mtbench data verify DATASET` reports) from their sources.

    Examples: `mtbench data prepare nyuv2 --from /data/nyuv2`, `mtbench data prepare nyuv2-synth --rebuild`
    """
    from mtbench.data.cache import prepare

    if rebuild:
        if source is not None or layout is not None:
            raise ConfigError(
                "--rebuild takes no --from or --layout",
                expected="--rebuild alone (each cache is rebuilt from the source it was prepared from)",
                found="--from" if source is not None else "--layout",
                fix=f"drop --from and --layout, or prepare anew without --rebuild: `mtbench data prepare {dataset} "
                "--from DIR`",
            )
        _rebuild(dataset, cache)
        return
    if source is None:
        raise ConfigError(
            "no source to prepare from",
            expected="--from DIR (a copy in a real layout), or --rebuild (repair the caches mtbench keeps)",
            found="neither",
            fix=f"`mtbench data prepare {dataset} --from /path/to/{dataset}`",
        )
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


def _rebuild(dataset: str, cache: Path | None) -> None:
    """``mtbench data prepare DATASET --rebuild``: check each cache of the data set, rebuild those that fail."""
    from mtbench.data.cache import caches_of, check_cache, rebuild

    spec = catalog.dataset(dataset)
    entries = caches_of(spec.name, cache)
    if not entries:
        raise _no_cache(spec.name, cache, "rebuild")
    for entry in entries:
        check = check_cache(entry.path)
        if check.ok:
            console.print(f"[green]OK[/]: {entry.path}: every checksum matches; kept", highlight=False)
            continue
        first = check.problems[0]
        console.print(
            f"rebuilding {entry.path} from {entry.source} ({len(check.problems)} problem(s); "
            f"first: {first.path.name}: {escape(first.problem)})",
            highlight=False,
        )
        start = time.perf_counter()
        with progress_bar("rebuilding") as update:
            prepared = rebuild(entry, spec.family, progress=update)
        after = check_cache(prepared.path)
        if not after.ok:  # the new cache is checked as a run will check it; never reported rebuilt unchecked
            raise after.problems[0].error(f"rebuild again: `mtbench data prepare {spec.name} --rebuild`")
        console.print(
            f"rebuilt {prepared.path} in {time.perf_counter() - start:.1f} s: {after.files} files, every checksum "
            f"matches; fingerprint sha256:{prepared.identity.fingerprint}",
            highlight=False,
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
