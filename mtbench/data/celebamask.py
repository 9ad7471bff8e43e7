"""CelebAMask-HQ readers (official release, Hugging Face parquet mirror) and writers.

Official release layout::

    CelebA-HQ-img/{k}.jpg                                   (1024² RGB)
    CelebAMask-HQ-mask-anno/{k // 2000}/{k:05d}_{part}.png  (512² binary masks, present parts only)
    CelebAMask-HQ-attribute-anno.txt                        (count; 40 names; "{k}.jpg ±1 ...")
    CelebA-HQ-to-CelebA-mapping.txt                         ("idx orig_idx orig_file"; split by orig_idx)

Part masks are combined in `CELEBA_PARTS` order, later parts overwriting earlier ones (19 classes with
background); each must be a single-channel PNG holding only 0 and 255 (checked as it is read). The
mapping file must hold exactly one line per image (checked when the data set is opened). Images are
resized to the mask resolution (512 for the real data) unless ``size`` says otherwise; masks are resized
with nearest-neighbour.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mtbench.data.constants import CELEBA_ATTRIBUTES, CELEBA_PARTS, CELEBA_TRAIN_END, CELEBA_VAL_END
from mtbench.data.io import (
    check_array,
    check_labels,
    load_image,
    load_image_as_stored,
    quiet_datasets,
    require_dir,
    require_file,
)
from mtbench.data.parquet import ParquetReader, parquet_split_files
from mtbench.data.reader import Reader, register_layout, to_chw_image
from mtbench.errors import DataFormatError, SplitError

IMAGES = "CelebA-HQ-img"
MASKS = "CelebAMask-HQ-mask-anno"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
REAL_MASK_SIZE = 512

#: 19-class label -> 3-class label (0 background, 1 hair, 2 skin). "Skin" is our choice: the facial
#: region (skin, nose, eyes, brows, ears, mouth, lips); eyeglasses, hat, earrings, necklace, neck
#: and cloth count as background, as in a face/hair/background parsing task.
FACE3_CLASSES = ("background", "hair", "skin")
_SKIN_PARTS = {"skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip"}
FACESEG19_TO_3 = np.array(
    [0] + [1 if p == "hair" else 2 if p in _SKIN_PARTS else 0 for p in CELEBA_PARTS], dtype=np.int64
)

ATTRIBUTE_TARGETS = {f"attr:{name}": name for name in CELEBA_ATTRIBUTES}
#: value ranges of the label maps (no ignore value: every pixel has a class)
FACE_LABEL_VALUES = {"faceseg19": (0, len(CELEBA_PARTS)), "faceseg3": (0, len(FACE3_CLASSES) - 1)}
#: faceseg3 is FACESEG19_TO_3[faceseg19]: a cache stores faceseg19 only
FACE_DERIVED: dict[str, tuple[str, np.ndarray | str]] = {"faceseg3": ("faceseg19", FACESEG19_TO_3)}
#: the task kind of every CelebAMask-HQ target (`Reader.target_kinds`)
FACE_TARGET_KINDS = {
    "faceseg19": "segmentation",
    "faceseg3": "segmentation",
    **dict.fromkeys(ATTRIBUTE_TARGETS, "binary"),
}


def _split_of(orig_idx: int) -> str:
    return "train" if orig_idx < CELEBA_TRAIN_END else "val" if orig_idx < CELEBA_VAL_END else "test"


#: CelebA index range of each split, for messages
_SPLIT_RANGES = {
    "train": f"0..{CELEBA_TRAIN_END - 1}",
    "val": f"{CELEBA_TRAIN_END}..{CELEBA_VAL_END - 1}",
    "test": f"{CELEBA_VAL_END} or more",
}
_MAPPING_ROW = re.compile(r"^([0-9]+)\s+([0-9]+)\s+(\S+)$")
_IMAGE_NAME = re.compile(r"^([0-9]+)\.jpg$")
#: Pillow modes a part mask may be stored in: 8-bit grayscale, or 1-bit (read as 0/255)
_MASK_MODES = ("L", "1")
_MODE_NAMES = {
    "RGB": "an RGB (3-channel) image",
    "RGBA": "an RGBA (4-channel) image",
    "LA": "a grayscale image with alpha (2 channels)",
    "P": "a palette (mode P) image",
    "I": "a 32-bit integer image",
    "I;16": "a 16-bit grayscale image",
    "F": "a 32-bit float image",
}


def _listing(items: list[Any], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_part_mask(path: Path, part: str) -> np.ndarray:
    """One part mask as a bool array; it must be single-channel and hold only 0 and 255.

    An RGB mask whose three channels are identical is read as gray (nothing is lost); any other RGB or
    a palette mask is refused rather than converted: a conversion can drop the part (a red 255 becomes
    gray 76, below the threshold). Other values (e.g. 0/1, or grays from resizing) are refused.
    """
    what = f"{part} mask"
    mask, mode = load_image_as_stored(path, what)
    if mode == "RGB" and mask.ndim == 3 and (mask == mask[..., :1]).all():
        # three identical channels hold the same mask (as OpenCV writes one): lossless to read as gray
        mask, mode = np.ascontiguousarray(mask[..., 0]), "L"
    if mode not in _MASK_MODES:
        raise DataFormatError(
            path,
            f"the {what} is not a single-channel image",
            expected="an 8-bit grayscale (or 1-bit) PNG holding 0 (outside the part) and 255 (inside)",
            found=_MODE_NAMES.get(mode, f"an image of Pillow mode {mode}")
            + (" whose channels differ" if mode == "RGB" else ""),
            fix="restore this mask from the original download; converting it may lose the part",
        )
    if mode == "1":
        return mask.astype(bool)
    stray = (mask != 0) & (mask != 255)
    if stray.any():
        values = np.unique(mask[stray])
        raise DataFormatError(
            path,
            f"the {what} is not binary",
            expected="only the values 0 (outside the part) and 255 (inside)",
            found=f"{int(stray.sum())} pixels with other values ({_listing(values.tolist())})",
            fix="restore this mask from the original download (resized or re-encoded masks are not binary)",
        )
    return mask == 255


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    if array.shape[0] == size and array.shape[1] == size:
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


@register_layout
class CelebaOfficialReader(Reader):
    """The official CelebAMask-HQ release (see the module docstring)."""

    layout: ClassVar[str] = "celebamask-official"
    family: ClassVar[str] = "celebamask"
    title: ClassVar[str] = "CelebAMask-HQ official release"
    stores_uint8_images: ClassVar[bool] = True
    target_sources: ClassVar[dict[str, str]] = {
        "faceseg19": "masks",
        "faceseg3": "masks",
        **{target: f"attribute {name}" for target, name in ATTRIBUTE_TARGETS.items()},
    }
    target_kinds: ClassVar[dict[str, str]] = FACE_TARGET_KINDS
    label_values: ClassVar[dict[str, tuple[int, int]]] = FACE_LABEL_VALUES
    derived_targets: ClassVar[dict[str, tuple[str, np.ndarray | str]]] = FACE_DERIVED

    required_splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(self, root: str | Path, size: int | None = None) -> None:
        super().__init__(root)
        manifest = self.synthetic_manifest()
        self.size = size or (manifest or {}).get("mask_size", REAL_MASK_SIZE)
        self.check_splits()

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / IMAGES).is_dir() and ((root / MASKS).is_dir() or (root / MAPPING_FILE).is_file())

    @classmethod
    def describe(cls) -> str:
        return f"{IMAGES}/, {MASKS}/, {ATTRIBUTE_FILE}, {MAPPING_FILE}"

    @cached_property
    def _splits(self) -> dict[str, list[str]]:
        """Image ids per split, from the mapping file; every image on disk must have exactly one line."""
        path = require_file(self.root / MAPPING_FILE, "CelebA-HQ to CelebA mapping")
        lines = path.read_text().splitlines()
        if lines and _MAPPING_ROW.match(lines[0].strip()):
            raise DataFormatError(
                path,
                "line 1 is a data line, not the header",
                expected="line 1: idx orig_idx orig_file",
                found=repr(lines[0][:80]),
                fix="restore the header line (line 1 is skipped as the header)",
            )
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        first_line: dict[int, int] = {}
        repeats: list[tuple[int, int, int]] = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            row = _MAPPING_ROW.match(line.strip())
            if row is None:
                raise DataFormatError(
                    path,
                    f"line {number} is malformed",
                    expected="idx orig_idx orig_file, with idx and orig_idx non-negative integers",
                    found=repr(line[:80]),
                    fix="restore the mapping file from the original download",
                )
            idx = int(row.group(1))
            if idx in first_line:
                repeats.append((idx, first_line[idx], number))
                continue
            first_line[idx] = number
            splits[_split_of(int(row.group(2)))].append(str(idx))
        if repeats:
            shown = "; ".join(f"image {idx} on lines {a} and {b}" for idx, a, b in repeats[:5])
            more = f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
            raise DataFormatError(
                path,
                f"repeated image ids: {shown}{more}",
                expected="one line per image (idx unique): the line decides the image's split",
                found=f"{len(repeats)} repeated line(s)",
                fix="remove the repeated lines, or restore the mapping file from the original download",
            )
        unmapped = sorted(set(self._image_ids()) - set(first_line))
        if unmapped:
            raise DataFormatError(
                path,
                f"no line for {len(unmapped)} image(s): {_listing([f'{IMAGES}/{k}.jpg' for k in unmapped])}",
                expected=f"a line 'idx orig_idx orig_file' for every {IMAGES}/<idx>.jpg",
                found=f"no line with idx {_listing(unmapped)}",
                fix="restore the mapping file from the original download (without a line an image has no split)",
            )
        return {name: sorted(ids, key=int) for name, ids in splits.items() if ids}

    def _image_ids(self) -> list[int]:
        """Ids of the ``{k}.jpg`` files in the image folder."""
        folder = require_dir(self.root / IMAGES, "images")
        with os.scandir(folder) as entries:
            return [int(m.group(1)) for entry in entries if (m := _IMAGE_NAME.match(entry.name))]

    def split_source(self, split: str) -> Path:
        return self.root / MAPPING_FILE

    def check_splits(self) -> None:
        """A split is the mapping lines whose orig_idx falls in its CelebA range; each must have one."""
        for split in self.required_splits:
            if split not in self._splits:
                raise SplitError(
                    self.root / MAPPING_FILE,
                    f"the {split} split is missing: no line maps an image to it",
                    expected=f"at least one line whose orig_idx is in CelebA's {split} range ({_SPLIT_RANGES[split]})",
                    found=", ".join(f"{name} {len(ids)}" for name, ids in self._splits.items()) or "no data lines",
                    fix="restore the mapping file and the images from the original download",
                )
        super().check_splits()

    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def sample_ids(self, split: str) -> list[str]:
        self.check_split(split)
        return self._splits[split]

    def _read_image(self, split: str, index: int) -> np.ndarray:
        path = self.root / IMAGES / f"{self.sample_ids(split)[index]}.jpg"
        image = check_array(load_image(path, "image", "RGB"), path, "image", shape=(None, None, 3), kinds="u")
        return to_chw_image(_resize(image, self.size, nearest=False))

    @cached_property
    def _mask_index(self) -> dict[int, dict[str, Path]]:
        folder = require_dir(self.root / MASKS, "part masks")
        pattern = re.compile(r"^(\d{5})_(" + "|".join(CELEBA_PARTS) + r")\.png$")
        index: dict[int, dict[str, Path]] = {}
        for sub in folder.iterdir():
            if sub.is_dir():
                for path in sub.iterdir():
                    match = pattern.match(path.name)
                    if match:
                        index.setdefault(int(match.group(1)), {})[match.group(2)] = path
        return index

    def locate(self, split: str, index: int, target: str) -> str:
        k = int(self.sample_ids(split)[index])
        if target.startswith("attr:"):
            return str(self.root / ATTRIBUTE_FILE)
        return str(self.root / MASKS / str(k // 2000) / f"{k:05d}_*.png")

    def _faceseg19(self, split: str, index: int) -> np.ndarray:
        k = int(self.sample_ids(split)[index])
        parts = self._mask_index.get(k)
        if not parts:
            where = self.root / MASKS / str(k // 2000) / f"{k:05d}_skin.png"
            raise DataFormatError(
                where,
                f"no part masks for image {k}",
                expected=f"{MASKS}/{k // 2000}/{k:05d}_<part>.png files",
                found="none",
                fix="restore the mask folder of this image",
            )
        labels: np.ndarray | None = None
        for value, part in enumerate(CELEBA_PARTS, start=1):
            if part not in parts:
                continue
            path = parts[part]
            mask = read_part_mask(path, part)
            if labels is None:
                labels = np.zeros(mask.shape, dtype=np.uint8)
            elif mask.shape != labels.shape:
                raise DataFormatError(
                    path,
                    f"{part} mask size differs from the other masks of image {k}",
                    expected="×".join(map(str, labels.shape)),
                    found="×".join(map(str, mask.shape)),
                )
            labels[mask] = value
        assert labels is not None
        return _resize(labels, self.size, nearest=True).astype(np.int64)

    def _attribute_column(self, name: str) -> dict[str, float]:
        """Values of one attribute for every image; other attributes' values are not kept."""
        cache = self.__dict__.setdefault("_attribute_cache", {})
        if name in cache:
            return cache[name]
        path = require_file(self.root / ATTRIBUTE_FILE, "attribute annotations")
        lines = path.read_text().splitlines()
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise DataFormatError(
                path,
                "missing header",
                expected="line 1: image count; line 2: 40 names",
                found=repr(lines[0][:40]) if lines else "an empty file",
            )
        names = lines[1].split()
        if name not in names:
            raise DataFormatError(
                path,
                f"attribute {name!r} missing from the header",
                expected="40 CelebA attributes",
                found=f"{len(names)} names",
            )
        column = names.index(name)
        rows = [line.split() for line in lines[2:] if line.strip()]
        if len(rows) != int(lines[0]):
            raise DataFormatError(
                path, "row count differs from the header", expected=lines[0].strip(), found=str(len(rows))
            )
        values: dict[str, float] = {}
        for number, fields in enumerate(rows, start=3):
            if len(fields) != len(names) + 1 or fields[column + 1] not in ("1", "-1"):
                raise DataFormatError(
                    path,
                    f"line {number} is malformed",
                    expected=f"'<k>.jpg' then {len(names)} values of 1 or -1",
                    found=repr(" ".join(fields)[:80]),
                )
            values[fields[0].removesuffix(".jpg")] = 1.0 if fields[column + 1] == "1" else 0.0
        cache[name] = values
        return values

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        if target in ("faceseg19", "faceseg3"):
            labels = self._faceseg19(split, index)
            return labels if target == "faceseg19" else FACESEG19_TO_3[labels]
        name = ATTRIBUTE_TARGETS[target]
        sample_id = self.sample_ids(split)[index]
        values = self._attribute_column(name)
        if sample_id not in values:
            raise DataFormatError(
                self.root / ATTRIBUTE_FILE,
                f"no attributes for image {sample_id}",
                expected=f"a line '{sample_id}.jpg ...'",
                found="none",
            )
        return np.asarray(values[sample_id], dtype=np.float32)

    def files(self) -> Iterator[Path]:
        for name in (ATTRIBUTE_FILE, MAPPING_FILE):
            if (self.root / name).is_file():
                yield self.root / name
        yield from (self.root / IMAGES).glob("*.jpg")
        for parts in self._mask_index.values():
            yield from parts.values()


@register_layout
class CelebaParquetReader(ParquetReader):
    """Hugging Face mirror ``eurecom-ds/celeba_hq_mask`` as local parquet shards
    (``data/{train,validation,test}-*.parquet``, columns ``image`` and ``mask``: 512² images, the mask
    holding class ids 0..18 in `CELEBA_PARTS` order). No attributes in this mirror."""

    layout: ClassVar[str] = "celebamask-parquet"
    family: ClassVar[str] = "celebamask"
    title: ClassVar[str] = "CelebAMask-HQ parquet mirror (eurecom-ds/celeba_hq_mask)"
    stores_uint8_images: ClassVar[bool] = True
    target_sources: ClassVar[dict[str, str]] = {"faceseg19": "mask", "faceseg3": "mask"}
    target_kinds: ClassVar[dict[str, str]] = FACE_TARGET_KINDS
    label_values: ClassVar[dict[str, tuple[int, int]]] = FACE_LABEL_VALUES
    derived_targets: ClassVar[dict[str, tuple[str, np.ndarray | str]]] = FACE_DERIVED
    SHARD_NAMES: ClassVar[dict[str, str]] = {"val": "validation"}

    def __init__(self, root: str | Path, size: int | None = None, cache_dir: Path | None = None) -> None:
        super().__init__(root, cache_dir)
        self.size = size or (self.synthetic_manifest() or {}).get("mask_size", REAL_MASK_SIZE)

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(parquet_split_files(root)) and not (root / IMAGES).is_dir()

    @classmethod
    def describe(cls) -> str:
        return "parquet shards data/{train,validation,test}-*.parquet with columns image, mask"

    def _read_image(self, split: str, index: int) -> np.ndarray:
        where, image = self._cell(split, index, "image")
        check_array(image, where, "image", shape=(None, None, 3), kinds="u")
        return to_chw_image(_resize(image, self.size, nearest=False))

    def _read_target(self, split: str, index: int, target: str) -> np.ndarray:
        where, mask = self._cell(split, index, "mask")
        if mask.ndim == 3:  # an RGB rendering of the label image: identical channels
            mask = mask[..., 0]
        check_array(mask, where, "face mask", shape=(None, None), kinds="u")
        check_labels(mask, where, "face mask", len(CELEBA_PARTS) + 1)
        labels = _resize(mask.astype(np.uint8), self.size, nearest=True).astype(np.int64)
        return labels if target == "faceseg19" else FACESEG19_TO_3[labels]


# --- writers (real layouts) -----------------------------------------------------------------------


class CelebaOfficialWriter:
    """Writes samples in the official layout; call `close` to write the two text files.

    A sample is ``(image uint8 (S,S,3), parts {name: bool (M,M)}, attributes {name: bool})``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._attributes: list[tuple[int, Mapping[str, bool]]] = []
        self._mapping: list[tuple[int, int]] = []
        (root / IMAGES).mkdir(parents=True, exist_ok=True)

    def add(
        self, k: int, orig_idx: int, image: np.ndarray, parts: Mapping[str, np.ndarray], attributes: Mapping[str, bool]
    ) -> None:
        from PIL import Image

        Image.fromarray(image).save(self.root / IMAGES / f"{k}.jpg", quality=95)
        folder = self.root / MASKS / str(k // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, mask in parts.items():
            Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(folder / f"{k:05d}_{part}.png")
        self._attributes.append((k, attributes))
        self._mapping.append((k, orig_idx))

    def close(self) -> None:
        rows = sorted(self._attributes, key=lambda r: r[0])
        lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES)]
        lines += [f"{k}.jpg  " + " ".join("1" if attrs[a] else "-1" for a in CELEBA_ATTRIBUTES) for k, attrs in rows]
        (self.root / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")
        mapping = ["idx         orig_idx        orig_file"]
        mapping += [f"{k:<11} {orig:<15} {orig + 1:06d}.jpg" for k, orig in sorted(self._mapping)]
        (self.root / MAPPING_FILE).write_text("\n".join(mapping) + "\n")


def write_celeba_parquet(root: Path, split: str, samples: Iterable[tuple[np.ndarray, np.ndarray]]) -> Path:
    """A split as one parquet shard in the ``eurecom-ds/celeba_hq_mask`` format (image, mask as images)."""
    import datasets

    quiet_datasets()
    from PIL import Image

    name = {"val": "validation"}.get(split, split)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})

    def rows() -> Iterator[dict[str, Any]]:
        for image, labels in samples:
            yield {"image": Image.fromarray(image), "mask": Image.fromarray(labels.astype(np.uint8))}

    path = root / "data" / f"{name}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mtbench-parquet-") as scratch:
        datasets.Dataset.from_generator(
            rows, features=features, cache_dir=scratch, fingerprint=uuid.uuid4().hex
        ).to_parquet(str(path))
    return require_file(path, "parquet shard")
