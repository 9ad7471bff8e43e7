"""Which data set a run uses and where its files come from: a prepared cache, a folder, or a synthetic stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtbench import catalog
from mtbench.callbacks import Notice
from mtbench.data.cache import ArrowCacheReader, _locked, find_prepared, mtbench_home, prepared_synthetic
from mtbench.data.layouts import open_reader
from mtbench.data.reader import SYNTH_MANIFEST, Reader
from mtbench.errors import ConfigError, DatasetNotFoundError
from mtbench.presets import Budget
from mtbench.specs import DatasetSpec


def synthetic_path(spec: DatasetSpec, budget: Budget) -> tuple[Path, dict[str, Any]]:
    """Where the synthetic stand-in of a budget lives (``$MTBENCH_HOME/synth/``), and its generator options.

    The folder's name carries the generator's version: after a generator changes its output, the old stand-in is
    not read as the new one (it stays on disk; delete it by hand once no run needs it).
    """
    options = {**spec.synth_options, **budget.synth_options.get(spec.name, {})}
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items()))
    version = f"-gen{spec.generator_version}" if spec.generator_version else ""
    return mtbench_home() / "synth" / f"{spec.name}{version}-n{budget.synth_samples}-{tag}-seed0", options


def synthetic_cache(spec: DatasetSpec, budget: Budget, notice: Notice | None = None) -> Path:
    """The synthetic stand-in for a budget, generated once into ``$MTBENCH_HOME/synth/``."""
    path, options = synthetic_path(spec, budget)
    with _locked(mtbench_home() / "synth" / ".lock"):
        if not path.is_dir():
            if notice:
                tag = ", ".join(f"{k} {v}" for k, v in sorted(options.items()))
                notice(f"generating {spec.name} ({budget.synth_samples} samples, {tag}) once into {path}")
            assert spec.generator is not None
            spec.generator(path, n=budget.synth_samples, seed=0, layout=spec.layouts[0], **options)
    return path


def _open_root(dataset: str | None, data_root: Path) -> tuple[DatasetSpec, Reader]:
    """The reader of ``--data-root``; refuses a folder that is not the data set ``--dataset`` names."""
    spec = catalog.dataset(dataset or "nyuv2")
    reader = open_reader(spec.family, data_root)
    actual = reader.identity(content=False)
    if spec.synthetic and (not actual.synthetic or actual.dataset != spec.name):
        what = f"synthetic {actual.dataset}" if actual.synthetic else f"real {actual.dataset}"
        raise ConfigError(
            f"--data-root {data_root} is not {spec.name}: it is {what} data ({reader.layout} layout)",
            expected=f"a folder written by `mtbench data synth {spec.name}` (it carries {SYNTH_MANIFEST})",
            found=f"no {SYNTH_MANIFEST}" if not actual.synthetic else f"{SYNTH_MANIFEST} of {actual.dataset}",
            fix=f"name what the folder holds: --dataset {actual.dataset if actual.synthetic else spec.family}",
        )
    if actual.synthetic and not spec.synthetic:
        spec = catalog.dataset(actual.dataset)
    return spec, reader


def _prepared(spec: DatasetSpec) -> Path:
    prepared = find_prepared(spec.name)
    if prepared is None:
        raise DatasetNotFoundError(
            f"no prepared copy of {spec.name}",
            expected="a prepared Arrow cache",
            found="none",
            fix=f"run `mtbench data prepare {spec.name} --from /path/to/it` once, or use {spec.name}-synth",
        )
    return prepared


def choose_data(
    dataset: str | None, data_root: Path | None, budget: Budget, notice: Notice | None = None
) -> tuple[DatasetSpec, str]:
    """The data set a run uses and where its files come from, without generating or reading samples.

    With no ``dataset``: a prepared real NYU-v2, else ``nyuv2-synth`` (said loudly).
    """
    if data_root is not None:
        spec, reader = _open_root(dataset, data_root)
        kind = "synthetic" if spec.synthetic else "real"
        return spec, f"{kind} files in {data_root} ({reader.layout} layout)"
    if dataset is None:
        prepared = find_prepared("nyuv2")
        if prepared is not None:
            return catalog.dataset("nyuv2"), f"prepared Arrow cache {prepared}"
        if notice:
            notice(
                "no prepared real NYU-v2 found (`mtbench data prepare nyuv2 --from DIR` makes one): this run "
                "uses the SYNTHETIC stand-in nyuv2-synth, and its result is tagged synthetic"
            )
        dataset = "nyuv2-synth"
    spec = catalog.dataset(dataset)
    if spec.synthetic:
        path, _ = synthetic_path(spec, budget)
        state = "cached" if path.is_dir() else "generated on first use"
        return spec, f"SYNTHETIC stand-in, {budget.synth_samples} samples in {path} ({state})"
    return spec, f"prepared Arrow cache {_prepared(spec)}"


def resolve_data(
    dataset: str | None, data_root: Path | None, budget: Budget, notice: Notice | None = None
) -> tuple[DatasetSpec, Reader]:
    """The data set a run uses, opened (see `choose_data`). A synthetic stand-in is generated here, once, and
    read, like a prepared real set, through an Arrow cache (`synthetic_reader`); ``data_root`` is read as it is."""
    if data_root is not None:
        return _open_root(dataset, data_root)
    spec, _ = choose_data(dataset, None, budget, notice)
    if spec.synthetic:
        return spec, synthetic_reader(spec, budget, notice)
    return spec, ArrowCacheReader(_prepared(spec))


def synthetic_reader(spec: DatasetSpec, budget: Budget, notice: Notice | None = None) -> ArrowCacheReader:
    """The synthetic stand-in of a budget (`synthetic_cache`) through its Arrow cache, prepared from the generated
    folder once (`prepared_synthetic`: keyed by the folder's content fingerprint). The cache holds exactly the
    arrays the folder's reader gives, and its identity is the folder's (fingerprint, synthetic flag, generator
    manifest; layout ``arrow-cache(<the folder's layout>)``), so results and their keys do not change."""
    generated = open_reader(spec.family, synthetic_cache(spec, budget, notice))
    return ArrowCacheReader(prepared_synthetic(generated, notice=notice))


def split_name(reader: Reader, wanted: str) -> str:
    if wanted in reader.splits():
        return wanted
    raise DatasetNotFoundError(
        f"split {wanted!r} missing from {reader.root}", expected=wanted, found=", ".join(reader.splits())
    )
