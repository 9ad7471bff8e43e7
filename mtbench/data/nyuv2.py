"""NYU-v2 readers (MTAN .npy tree, NYUD-MT tree, Hugging Face parquet mirror) and writers.

The writers produce the exact real layouts; the synthetic generator and the test fixtures use them,
so the same readers users run on real data are exercised end to end.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from mtbench.data.constants import NYU13_CLASSES, NYU40_CLASSES
from mtbench.data.io import (
    check_array,
    check_finite,
    check_labels,
    load_image,
    load_npy,
    quiet_datasets,
    require_dir,
    require_file,
    save_npy,
)
from mtbench.data.parquet import ParquetReader, parquet_split_files
from mtbench.data.reader import Reader, label_edges, register_layout, to_chw_image
from mtbench.errors import DataFormatError

#: Sample as the writers take it (HWC, as the MTAN files store it).
RawNyuSample = Mapping[str, np.ndarray]
#: the task kind of every NYU-v2 target (`Reader.target_kinds`)
NYU_TARGET_KINDS = {
    "semantic13": "segmentation",
    "semantic40": "segmentation",
    "depth": "depth",
    "normal": "normals",
    "edge": "edges",
}

NORMAL_TOLERANCE = 0.1  # valid normals must have |‖n‖ − 1| ≤ this


def _check_normals(normal: np.ndarray, path: Path | str) -> None:
    """(H, W, 3): finite; every pixel all-zero (invalid) or of unit length within tolerance."""
    check_finite(normal, path, "surface normals")
    norm = np.linalg.norm(normal, axis=-1)
    bad = (norm > 0) & (np.abs(norm - 1.0) > NORMAL_TOLERANCE)
    if bad.any():
        raise DataFormatError(
            path,
            "surface normals are not unit vectors",
            expected=f"‖n‖ = 1 ± {NORMAL_TOLERANCE} or all-zero (invalid)",
            found=f"{int(bad.sum())} pixels with ‖n‖ in [{norm[bad].min():.3f}, {norm[bad].max():.3f}]",
        )


def _labels_to_int(labels: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.equal(np.round(labels), labels).all():
            raise DataFormatError(
                path,
                f"the {what} holds non-integer values",
                expected="integral class ids",
                found="fractional or NaN values",
            )
    return labels.astype(np.int64)


@register_layout
class MtanReader(Reader):
    """MTAN layout: ``{train,val}/{image,label,depth,normal}/{i}.npy`` (HWC; 13 classes; no edges).

    Edges are *derived* from the semantic labels (boundaries between two labelled classes), so in
    this layout the ``edge`` task shares its source with ``semantic13``.
    """

    layout: ClassVar[str] = "nyuv2-mtan"
    family: ClassVar[str] = "nyuv2"
    title: ClassVar[str] = "NYU-v2 MTAN (.npy tree)"
    target_sources: ClassVar[dict[str, str]] = {
        "semantic13": "label",
        "depth": "depth",
        "normal": "normal",
        "edge": "label",
    }
    target_kinds: ClassVar[dict[str, str]] = NYU_TARGET_KINDS
    label_values: ClassVar[dict[str, tuple[int, int]]] = {"semantic13": (-1, len(NYU13_CLASSES) - 1)}
    derived_targets: ClassVar[dict[str, tuple[str, np.ndarray | str]]] = {"edge": ("semantic13", "label_edges")}
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")
    required_splits: ClassVar[tuple[str, ...]] = SPLITS
    FOLDERS: ClassVar[dict[str, str]] = {"image": "image", "label": "label", "depth": "depth", "normal": "normal"}

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.check_splits()

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any((root / split / "image").is_dir() for split in cls.SPLITS)

    @classmethod
    def describe(cls) -> str:
        return "train/ and val/, each with image/, label/, depth/, normal/ holding {i}.npy"

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.SPLITS if (self.root / s / "image").is_dir())

    @cached_property
    def _ids(self) -> dict[str, list[str]]:
        ids = {}
        for split in self.splits():
            names = [p.stem for p in (self.root / split / "image").glob("*.npy")]
            ids[split] = sorted(names, key=lambda n: (0, int(n), n) if n.isdigit() else (1, 0, n))
        return ids

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return self._ids[split]

    def _path(self, split: str, index: int, folder: str) -> Path:
        return self.root / split / folder / f"{self.sample_ids(split)[index]}.npy"

    def locate(self, split: str, index: int, target: str) -> str:
        folder = {"semantic13": "label", "edge": "label"}.get(target, target)
        return str(self._path(split, index, folder))

    def split_source(self, split: str) -> Path:
        return self.root / split / "image"

    def sample_files(self, split: str, index: int) -> tuple[Path, dict[str, Path]]:
        folders = {"semantic13": "label", "edge": "label", "depth": "depth", "normal": "normal"}
        return self._path(split, index, "image"), {t: self._path(split, index, f) for t, f in folders.items()}

    def _read_image(self, split: str, index: int) -> np.ndarray:
        path = self._path(split, index, "image")
        image = check_array(load_npy(path, "image"), path, "image", shape=(None, None, 3), kinds="f")
        check_finite(image, path, "image", 0.0, 1.0)
        return to_chw_image(image)

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        if target in ("semantic13", "edge"):
            path = self._path(split, index, "label")
            require_dir(path.parent, "semantic labels")
            labels = check_array(
                load_npy(path, "semantic labels"), path, "semantic labels", shape=(None, None), kinds="fiu"
            )
            labels = _labels_to_int(labels, path, "semantic labels")
            check_labels(labels, path, "semantic labels", len(NYU13_CLASSES), ignore=(-1,))
            return labels if target == "semantic13" else label_edges(labels)
        if target == "depth":
            path = self._path(split, index, "depth")
            require_dir(path.parent, "depth maps")
            depth = check_array(load_npy(path, "depth map"), path, "depth map", shape=(None, None, 1), kinds="f")
            check_finite(depth, path, "depth map", 0.0, None)
            return np.ascontiguousarray(np.moveaxis(depth.astype(np.float32), -1, 0))
        path = self._path(split, index, "normal")
        require_dir(path.parent, "surface normals")
        normal = check_array(
            load_npy(path, "surface normals"), path, "surface normals", shape=(None, None, 3), kinds="f"
        )
        _check_normals(normal, path)
        return np.ascontiguousarray(np.moveaxis(normal.astype(np.float32), -1, 0))

    def files(self) -> Iterator[Path]:
        for split in self.splits():
            for folder in self.FOLDERS.values():
                yield from (self.root / split / folder).glob("*.npy")


@register_layout
class NyudMtReader(Reader):
    """NYUD-MT layout (Vandenhende et al.): ``images/{id}.jpg``, ``segmentation/{id}.png`` (40 classes),
    ``depth/``, ``normals/``, ``edge/`` as ``{id}.npy``, split lists ``gt_sets/{train,val}.txt``.

    Segmentation PNGs hold 0 = unlabeled and 1..40; the reader returns 0..39 and -1 for unlabeled
    (the data set's convention maps 0 to 255 and subtracts 1; mtbench uses -1 as its ignore value).
    """

    layout: ClassVar[str] = "nyuv2-nyudmt"
    family: ClassVar[str] = "nyuv2"
    title: ClassVar[str] = "NYU-v2 NYUD-MT (jpg/png/npy tree)"
    stores_uint8_images: ClassVar[bool] = True
    target_sources: ClassVar[dict[str, str]] = {
        "semantic40": "segmentation",
        "depth": "depth",
        "normal": "normals",
        "edge": "edge",
    }
    target_kinds: ClassVar[dict[str, str]] = NYU_TARGET_KINDS
    label_values: ClassVar[dict[str, tuple[int, int]]] = {"semantic40": (-1, len(NYU40_CLASSES) - 1)}
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")
    required_splits: ClassVar[tuple[str, ...]] = SPLITS
    TARGET_FILES: ClassVar[dict[str, tuple[str, str]]] = {
        "semantic40": ("segmentation", "png"),
        "depth": ("depth", "npy"),
        "normal": ("normals", "npy"),
        "edge": ("edge", "npy"),
    }

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.check_splits()

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "gt_sets").is_dir() and (root / "images").is_dir()

    @classmethod
    def describe(cls) -> str:
        return "images/{id}.jpg, segmentation/{id}.png, depth|normals|edge/{id}.npy, gt_sets/{train,val}.txt"

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.SPLITS if (self.root / "gt_sets" / f"{s}.txt").is_file())

    @cached_property
    def _ids(self) -> dict[str, list[str]]:
        ids = {}
        for split in self.splits():
            path = self.root / "gt_sets" / f"{split}.txt"
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if len(set(names)) != len(names):
                raise DataFormatError(
                    path,
                    "the split list repeats ids",
                    expected="unique ids",
                    found=f"{len(names) - len(set(names))} repeated",
                )
            ids[split] = names
        return ids

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return self._ids[split]

    def _read_image(self, split: str, index: int) -> np.ndarray:
        path = self.root / "images" / f"{self.sample_ids(split)[index]}.jpg"
        image = check_array(load_image(path, "image", "RGB"), path, "image", shape=(None, None, 3), kinds="u")
        return to_chw_image(image)

    def locate(self, split: str, index: int, target: str) -> str:
        return str(self.sample_files(split, index)[1][target])

    def split_source(self, split: str) -> Path:
        return self.root / "gt_sets" / f"{split}.txt"

    def sample_files(self, split: str, index: int) -> tuple[Path, dict[str, Path]]:
        sample_id = self.sample_ids(split)[index]
        targets = {t: self.root / folder / f"{sample_id}.{suffix}" for t, (folder, suffix) in self.TARGET_FILES.items()}
        return self.root / "images" / f"{sample_id}.jpg", targets

    def _npy(self, split: str, index: int, folder: str, what: str) -> tuple[Path, np.ndarray]:
        path = self.root / folder / f"{self.sample_ids(split)[index]}.npy"
        require_dir(path.parent, what)
        return path, load_npy(path, what)

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        if target == "semantic40":
            path = self.root / "segmentation" / f"{self.sample_ids(split)[index]}.png"
            require_dir(path.parent, "semantic labels")
            labels = check_array(
                load_image(path, "semantic labels"), path, "semantic labels", shape=(None, None), kinds="u"
            ).astype(np.int64)
            check_labels(labels, path, "semantic labels", len(NYU40_CLASSES) + 1)
            return labels - 1  # 0 (unlabeled) -> -1, 1..40 -> 0..39
        if target == "depth":
            path, depth = self._npy(split, index, "depth", "depth map")
            if depth.ndim == 3:
                check_array(depth, path, "depth map", shape=(None, None, 1), kinds="f")
                depth = depth[..., 0]
            check_array(depth, path, "depth map", shape=(None, None), kinds="f")
            check_finite(depth, path, "depth map", 0.0, None)
            return depth.astype(np.float32)[None]
        if target == "normal":
            path, normal = self._npy(split, index, "normals", "surface normals")
            check_array(normal, path, "surface normals", shape=(None, None, 3), kinds="f")
            _check_normals(normal, path)
            return np.ascontiguousarray(np.moveaxis(normal.astype(np.float32), -1, 0))
        path, edge = self._npy(split, index, "edge", "edge map")
        if edge.ndim == 3:
            check_array(edge, path, "edge map", shape=(None, None, 1), kinds="fui")
            edge = edge[..., 0]
        check_array(edge, path, "edge map", shape=(None, None), kinds="fuib")
        check_finite(edge.astype(np.float32), path, "edge map", 0.0, 1.0)
        return (edge > 0.5).astype(np.float32)[None]

    def files(self) -> Iterator[Path]:
        yield from (self.root / "gt_sets").glob("*.txt")
        for folder, suffix in (
            ("images", "jpg"),
            ("segmentation", "png"),
            ("depth", "npy"),
            ("normals", "npy"),
            ("edge", "npy"),
        ):
            yield from (self.root / folder).glob(f"*.{suffix}")


@register_layout
class NyuParquetReader(ParquetReader):
    """Hugging Face mirror ``tanganke/nyuv2`` as local parquet shards (``data/{train,val}-*.parquet``):
    columns ``image`` (3×H×W float32), ``segmentation`` (H×W int, 13 classes, -1 ignore), ``depth``
    (1×H×W), ``normal`` (3×H×W). Same content as the MTAN layout; edges derived from labels."""

    layout: ClassVar[str] = "nyuv2-parquet"
    family: ClassVar[str] = "nyuv2"
    title: ClassVar[str] = "NYU-v2 parquet mirror (tanganke/nyuv2)"
    target_sources: ClassVar[dict[str, str]] = {
        "semantic13": "segmentation",
        "depth": "depth",
        "normal": "normal",
        "edge": "segmentation",
    }
    target_kinds: ClassVar[dict[str, str]] = NYU_TARGET_KINDS
    label_values: ClassVar[dict[str, tuple[int, int]]] = {"semantic13": (-1, len(NYU13_CLASSES) - 1)}
    derived_targets: ClassVar[dict[str, tuple[str, np.ndarray | str]]] = {"edge": ("semantic13", "label_edges")}

    SPLITS: ClassVar[tuple[str, ...]] = ("train", "val")
    required_splits: ClassVar[tuple[str, ...]] = SPLITS

    @classmethod
    def detect(cls, root: Path) -> bool:
        return "train" in parquet_split_files(root) or "val" in parquet_split_files(root)

    @classmethod
    def describe(cls) -> str:
        return "parquet shards data/train-*.parquet and data/val-*.parquet"

    def _read_image(self, split: str, index: int) -> np.ndarray:
        where, image = self._cell(split, index, "image")
        check_array(image, where, "image", shape=(3, None, None), kinds="f")
        check_finite(image, where, "image", 0.0, 1.0)
        return np.ascontiguousarray(image, dtype=np.float32)

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        if target in ("semantic13", "edge"):
            where, labels = self._cell(split, index, "segmentation")
            check_array(labels, where, "semantic labels", shape=(None, None), kinds="fiu")
            labels = _labels_to_int(labels, where, "semantic labels")
            check_labels(labels, where, "semantic labels", len(NYU13_CLASSES), ignore=(-1,))
            return labels if target == "semantic13" else label_edges(labels)
        if target == "depth":
            where, depth = self._cell(split, index, "depth")
            check_array(depth, where, "depth map", shape=(1, None, None), kinds="f")
            check_finite(depth, where, "depth map", 0.0, None)
            return depth.astype(np.float32)
        where, normal = self._cell(split, index, "normal")
        check_array(normal, where, "surface normals", shape=(3, None, None), kinds="f")
        _check_normals(np.moveaxis(normal, 0, -1), where)
        return normal.astype(np.float32)


# --- writers (real layouts) -----------------------------------------------------------------------


def write_mtan(root: Path, split: str, index: int, sample: RawNyuSample) -> None:
    """One sample in the MTAN layout (float32 image in [0,1], float32 labels with -1, HWC)."""
    save_npy(root / split / "image" / f"{index}.npy", sample["image"].astype(np.float32))
    save_npy(root / split / "label" / f"{index}.npy", sample["semantic13"].astype(np.float32))
    save_npy(root / split / "depth" / f"{index}.npy", sample["depth"].astype(np.float32)[..., None])
    save_npy(root / split / "normal" / f"{index}.npy", sample["normal"].astype(np.float32))


def write_nyudmt(root: Path, split: str, index: int, sample: RawNyuSample) -> None:
    """One sample in the NYUD-MT layout; appends its id to ``gt_sets/{split}.txt``."""
    from PIL import Image

    sample_id = f"{split}_{index:05d}"
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rgb = np.clip(np.round(sample["image"] * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "images" / f"{sample_id}.jpg", quality=95)
    Image.fromarray(sample["semantic40"].astype(np.uint8)).save(root / "segmentation" / f"{sample_id}.png")
    save_npy(root / "depth" / f"{sample_id}.npy", sample["depth"].astype(np.float32))
    save_npy(root / "normals" / f"{sample_id}.npy", sample["normal"].astype(np.float32))
    save_npy(root / "edge" / f"{sample_id}.npy", sample["edge"].astype(np.float32))
    with open(root / "gt_sets" / f"{split}.txt", "a") as handle:
        handle.write(sample_id + "\n")


def write_parquet(root: Path, split: str, samples: Iterable[RawNyuSample], height: int, width: int) -> Path:
    """A split as one parquet shard in the ``tanganke/nyuv2`` column format (CHW arrays)."""
    import datasets

    quiet_datasets()

    features = datasets.Features(
        {
            "image": datasets.Array3D((3, height, width), "float32"),
            "segmentation": datasets.Array2D((height, width), "int64"),
            "depth": datasets.Array3D((1, height, width), "float32"),
            "normal": datasets.Array3D((3, height, width), "float32"),
        }
    )

    def rows() -> Iterator[dict[str, np.ndarray]]:
        for sample in samples:
            yield {
                "image": np.moveaxis(sample["image"].astype(np.float32), -1, 0),
                "segmentation": sample["semantic13"].astype(np.int64),
                "depth": sample["depth"].astype(np.float32)[None],
                "normal": np.moveaxis(sample["normal"].astype(np.float32), -1, 0),
            }

    path = root / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mtbench-parquet-") as scratch:  # never reuse HF's cache
        datasets.Dataset.from_generator(
            rows, features=features, cache_dir=scratch, fingerprint=uuid.uuid4().hex
        ).to_parquet(str(path))
    return require_file(path, "parquet shard")
