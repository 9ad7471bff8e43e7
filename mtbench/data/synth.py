"""Write the synthetic stand-ins ``nyuv2-synth`` and ``celebamask-synth`` in the real layouts.

Each sample is drawn from its own generator seeded by ``(seed, index)``, so a data set is
reproducible and sample ``i`` does not depend on how many samples are written. The output folder
is built under a scratch name and renamed at the end; it carries ``mtbench-synthetic.json`` so every
reader tags what it reads as synthetic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import mtbench
from mtbench.data.constants import CELEBA_TRAIN_END, CELEBA_VAL_END
from mtbench.data.io import atomic_write_json
from mtbench.data.reader import SYNTH_MANIFEST
from mtbench.errors import ConfigError

Progress = Callable[[int, int], None] | None

NYU_VAL_FRACTION = 0.25
#: CelebA-HQ's split proportions (24,183 / 2,993 / 2,824 of 30,000)
CELEBA_SPLIT_P = (24183 / 30000, 2993 / 30000, 2824 / 30000)


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _staging(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise ConfigError(
            f"{out} already exists and is not empty",
            expected="a new or empty folder",
            found=str(out),
            fix="choose another --out, or pass --overwrite",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _publish(staging: Path, out: Path) -> Path:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    os.replace(staging, out)
    return out


def _manifest(
    dataset: str, generator: str, version: str, seed: int, layout: str, splits: dict[str, int], **options: Any
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "synthetic": True,
        "generator": generator,
        "generator_version": version,
        "seed": seed,
        "layout": layout,
        "splits": splits,
        "mtbench_version": mtbench.__version__,
        **options,
    }


def generate_nyuv2(
    out: Path,
    *,
    n: int = 1000,
    seed: int = 0,
    layout: str = "nyuv2-mtan",
    height: int = 96,
    width: int = 128,
    val_samples: int | None = None,
    overwrite: bool = False,
    progress: Progress = None,
) -> Path:
    """Write ``n`` ray-cast NYU-like scenes (75 % train, 25 % val; ``val_samples`` sets the val count) in ``layout``."""
    from mtbench.data import synth_nyuv2
    from mtbench.data.nyuv2 import write_mtan, write_nyudmt, write_parquet

    if layout not in ("nyuv2-mtan", "nyuv2-nyudmt", "nyuv2-parquet"):
        raise ConfigError(
            f"nyuv2-synth cannot be written as {layout!r}",
            expected="nyuv2-mtan, nyuv2-nyudmt or nyuv2-parquet",
            found=layout,
        )
    if n < 2:
        raise ConfigError("too few samples", expected="--n of at least 2 (one per split)", found=str(n))
    if val_samples is not None and not 1 <= val_samples < n:
        raise ConfigError(
            "val_samples leaves no sample for a split", expected=f"1 <= val_samples < n = {n}", found=str(val_samples)
        )
    out = Path(out)
    staging = _staging(out, overwrite)
    n_val = val_samples if val_samples is not None else max(1, int(round(n * NYU_VAL_FRACTION)))
    splits = {"train": n - n_val, "val": n_val}
    try:
        done = 0

        def samples(split: str, offset: int) -> Any:
            nonlocal done
            for i in range(splits[split]):
                scene = synth_nyuv2.render_scene(_sample_rng(seed, offset + i), height, width)
                yield (
                    i,
                    {
                        "image": scene.image,
                        "semantic13": scene.semantic13,
                        "semantic40": scene.semantic40,
                        "depth": scene.depth,
                        "normal": scene.normal,
                        "edge": scene.edge,
                    },
                )
                done += 1
                if progress:
                    progress(done, n)

        offsets = {"train": 0, "val": splits["train"]}
        for split in splits:
            if layout == "nyuv2-parquet":
                write_parquet(staging, split, (s for _, s in samples(split, offsets[split])), height, width)
            else:
                write = write_mtan if layout == "nyuv2-mtan" else write_nyudmt
                for i, sample in samples(split, offsets[split]):
                    write(staging, split, i, sample)
        atomic_write_json(
            staging / SYNTH_MANIFEST,
            _manifest(
                "nyuv2-synth",
                "mtbench.data.synth_nyuv2",
                synth_nyuv2.GENERATOR_VERSION,
                seed,
                layout,
                splits,
                height=height,
                width=width,
                **({"val_samples": val_samples} if val_samples is not None else {}),
            ),
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, out)


def generate_celebamask(
    out: Path,
    *,
    n: int = 1000,
    seed: int = 0,
    layout: str = "celebamask-official",
    image_size: int = 128,
    mask_size: int = 64,
    test_samples: int | None = None,
    overwrite: bool = False,
    progress: Progress = None,
) -> Path:
    """Write ``n`` parametric faces; splits follow CelebA-HQ's proportions through the mapping file
    (``test_samples``: that many test faces, the others split between train and val in CelebA-HQ's proportion)."""
    from mtbench.data import synth_celebamask
    from mtbench.data.celebamask import CelebaOfficialWriter, write_celeba_parquet

    if layout not in ("celebamask-official", "celebamask-parquet"):
        raise ConfigError(
            f"celebamask-synth cannot be written as {layout!r}",
            expected="celebamask-official or celebamask-parquet",
            found=layout,
        )
    if n < 3:
        raise ConfigError("too few samples", expected="--n of at least 3 (one per split)", found=str(n))
    if test_samples is not None and not 1 <= test_samples <= n - 2:
        raise ConfigError(
            "test_samples leaves no sample for train or val", expected=f"1 <= test_samples <= n - 2 = {n - 2}",
            found=str(test_samples),
        )
    out = Path(out)
    staging = _staging(out, overwrite)
    # Split assignment: every split gets at least one sample, the rest follow CelebA-HQ's proportions.
    split_rng = np.random.default_rng([seed, 2**31 - 1])
    if test_samples is None:
        assignment = np.concatenate([[0, 1, 2], split_rng.choice(3, size=n - 3, p=CELEBA_SPLIT_P)])
    else:
        train_val = np.asarray(CELEBA_SPLIT_P[:2]) / sum(CELEBA_SPLIT_P[:2])
        rest = split_rng.choice(2, size=n - test_samples - 2, p=train_val)
        assignment = np.concatenate([[0, 1], rest, np.full(test_samples, 2)])
    split_rng.shuffle(assignment)
    ranges = ((0, CELEBA_TRAIN_END), (CELEBA_TRAIN_END, CELEBA_VAL_END), (CELEBA_VAL_END, 202599))
    orig = np.empty(n, dtype=np.int64)
    for s, (low, high) in enumerate(ranges):
        members = np.flatnonzero(assignment == s)
        orig[members] = np.sort(split_rng.choice(np.arange(low, high), size=members.size, replace=False))
    names = ("train", "val", "test")
    splits = {names[s]: int((assignment == s).sum()) for s in range(3)}
    try:
        faces = (synth_celebamask.render_face(_sample_rng(seed, k), image_size, mask_size) for k in range(n))
        if layout == "celebamask-official":
            writer = CelebaOfficialWriter(staging)
            for k, face in enumerate(faces):
                writer.add(k, int(orig[k]), face.image, face.parts, face.attributes)
                if progress:
                    progress(k + 1, n)
            writer.close()
        else:
            rendered = list(faces)
            for s, name in enumerate(names):
                members = [k for k in range(n) if assignment[k] == s]
                write_celeba_parquet(
                    staging,
                    name,
                    (
                        (rendered[k].image, synth_celebamask.combine_parts(rendered[k].parts, mask_size))
                        for k in members
                    ),
                )
                if progress:
                    progress(sum(splits[x] for x in names[: s + 1]), n)
        atomic_write_json(
            staging / SYNTH_MANIFEST,
            _manifest(
                "celebamask-synth",
                "mtbench.data.synth_celebamask",
                synth_celebamask.GENERATOR_VERSION,
                seed,
                layout,
                splits,
                image_size=image_size,
                mask_size=mask_size,
                **({"test_samples": test_samples} if test_samples is not None else {}),
            ),
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _publish(staging, out)
