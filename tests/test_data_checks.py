"""Broken data sets are refused by `mtbench data verify`, by `mtbench data prepare` and when a run opens
them, each time with a typed error naming the offending file or folder.

Cases: a missing split; an empty split; a CelebAMask-HQ mapping file with a repeated or a missing line;
a part mask stored as RGB/palette or holding values other than 0 and 255; a NYUD-MT image whose size
differs from its (mutually consistent) targets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtbench.data.cache import CACHE_META, read_index
from mtbench.data.celebamask import IMAGES, MAPPING_FILE, MASKS
from mtbench.data.layouts import open_reader
from mtbench.errors import DataFormatError, SplitError


def _read_like_a_run(family: str, root: Path) -> None:
    """Open ``root`` as `mtbench run --data-root` does, then read every sample with every target."""
    reader = open_reader(family, root)
    for split in reader.splits():
        for index in range(reader.num_samples(split)):
            reader.read(split, index, reader.targets())


def _refused_everywhere(
    cli, tmp_path: Path, family: str, root: Path, path: Path, words: str, error: type[DataFormatError]
) -> None:
    """`verify` and `prepare` exit 1 naming ``path`` (prepare registers nothing); a run's open raises ``error``."""
    code, text = cli("data", "verify", family, "--root", root)
    assert code == 1, text
    assert str(path) in text.replace("\n", ""), f"{path} not named by verify:\n{text}"
    assert words in " ".join(text.split()), f"{words!r} not in verify's output:\n{text}"

    cache = tmp_path / "cache"
    code, text = cli("data", "prepare", family, "--from", root, "--cache", cache)
    assert code == 1, text
    assert str(path) in text.replace("\n", ""), f"{path} not named by prepare:\n{text}"
    assert words in " ".join(text.split()), f"{words!r} not in prepare's output:\n{text}"
    assert read_index(cache) == {} and not list(cache.rglob(CACHE_META)), "prepare registered a cache"

    with pytest.raises(error) as caught:
        _read_like_a_run(family, root)
    assert caught.value.path == path, str(caught.value)
    assert words in str(caught.value)


def _mapping_lines(root: Path) -> list[str]:
    return (root / MAPPING_FILE).read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


# --- splits -----------------------------------------------------------------------------------------------


def _drop_celeba_test_split(root: Path) -> Path:
    """Remove the test split's mapping lines and images (masks may stay: they are only looked up)."""
    lines = _mapping_lines(root)
    kept = [lines[0]]
    for line in lines[1:]:
        idx, orig = line.split()[:2]
        if int(orig) >= 182638:
            (root / IMAGES / f"{idx}.jpg").unlink()
        else:
            kept.append(line)
    assert len(kept) < len(lines)
    _write_lines(root / MAPPING_FILE, kept)
    return root / MAPPING_FILE


@pytest.mark.parametrize("layout", ["nyuv2-mtan", "nyuv2-nyudmt", "celebamask-official"])
def test_missing_split(cli, request, copy_of, tmp_path, layout):
    if layout == "nyuv2-mtan":
        root = copy_of(request.getfixturevalue("nyu_mtan"))
        shutil.rmtree(root / "val")
        family, path, words = "nyuv2", root / "val" / "image", "the val split is missing"
    elif layout == "nyuv2-nyudmt":
        root = copy_of(request.getfixturevalue("nyu_nyudmt"))
        (root / "gt_sets" / "val.txt").unlink()
        family, path, words = "nyuv2", root / "gt_sets" / "val.txt", "the val split is missing"
    else:
        root = copy_of(request.getfixturevalue("face_official"))
        family, path, words = "celebamask", _drop_celeba_test_split(root), "the test split is missing"
    _refused_everywhere(cli, tmp_path, family, root, path, words, SplitError)


@pytest.mark.parametrize("layout", ["nyuv2-mtan", "nyuv2-nyudmt"])
def test_empty_split(cli, request, copy_of, tmp_path, layout):
    if layout == "nyuv2-mtan":
        root = copy_of(request.getfixturevalue("nyu_mtan"))
        path = root / "val" / "image"
        for file in path.iterdir():
            file.unlink()
    else:
        root = copy_of(request.getfixturevalue("nyu_nyudmt"))
        path = root / "gt_sets" / "val.txt"
        path.write_text("\n")
    _refused_everywhere(cli, tmp_path, "nyuv2", root, path, "the val split has no samples", SplitError)


# --- CelebAMask-HQ mapping file -----------------------------------------------------------------------------


def test_duplicate_mapping_line(cli, face_official, copy_of, tmp_path):
    root = copy_of(face_official)
    lines = _mapping_lines(root)
    idx = lines[2].split()[0]  # line 3
    _write_lines(root / MAPPING_FILE, [*lines, lines[2]])  # repeated as the last line
    words = f"repeated image ids: image {idx} on lines 3 and {len(lines) + 1}"
    _refused_everywhere(cli, tmp_path, "celebamask", root, root / MAPPING_FILE, words, DataFormatError)


def test_missing_mapping_line(cli, face_official, copy_of, tmp_path):
    root = copy_of(face_official)
    lines = _mapping_lines(root)
    number = next(n for n, line in enumerate(lines[1:], 1) if int(line.split()[1]) < 162771)  # a train image
    idx = lines[number].split()[0]
    _write_lines(root / MAPPING_FILE, lines[:number] + lines[number + 1 :])
    words = f"no line for 1 image(s): {IMAGES}/{idx}.jpg"
    _refused_everywhere(cli, tmp_path, "celebamask", root, root / MAPPING_FILE, words, DataFormatError)


# --- CelebAMask-HQ part masks --------------------------------------------------------------------------------


def _a_part_mask(root: Path) -> tuple[Path, np.ndarray]:
    """The skin mask of the first image: a 0/255 grayscale PNG with a non-empty part."""
    path = sorted((root / MASKS / "0").glob("*_skin.png"))[0]
    mask = np.asarray(Image.open(path))
    assert mask.ndim == 2 and set(np.unique(mask)) == {0, 255}
    return path, mask


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_rgb_part_mask(cli, face_official, copy_of, tmp_path, mode):
    root = copy_of(face_official)
    path, mask = _a_part_mask(root)
    if mode == "RGB":  # the part in red only: converting to gray (76 < 128) would silently drop it
        Image.fromarray(np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)], axis=-1)).save(path)
        found = "found: an RGB (3-channel) image"
    else:
        Image.fromarray(mask).convert("P").save(path)
        found = "found: a palette (mode P) image"
    _refused_everywhere(cli, tmp_path, "celebamask", root, path, "is not a single-channel image", DataFormatError)
    code, text = cli("data", "verify", "celebamask", "--root", root)
    assert found in " ".join(text.split()), text


def test_rgb_part_mask_with_identical_channels_is_read_losslessly(face_official, copy_of):
    from mtbench.data.celebamask import read_part_mask

    root = copy_of(face_official)
    path, mask = _a_part_mask(root)
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(path)  # as OpenCV writes a gray mask
    assert np.array_equal(read_part_mask(path, "skin"), mask == 255)


@pytest.mark.parametrize("values", [(0, 128, 255), (0, 1)], ids=["gray-128", "zero-one"])
def test_non_binary_part_mask(cli, face_official, copy_of, tmp_path, values):
    root = copy_of(face_official)
    path, mask = _a_part_mask(root)
    if values == (0, 1):  # a 0/1 mask: the reader thresholds at 128, so the part would vanish
        mask = (mask // 255).astype(np.uint8)
    else:  # gray pixels, as from resizing
        mask = mask.copy()
        mask[0, :4] = 128
    Image.fromarray(mask).save(path)
    _refused_everywhere(cli, tmp_path, "celebamask", root, path, "is not binary", DataFormatError)


# --- NYUD-MT image size -------------------------------------------------------------------------------------------


def test_wrong_size_nyudmt_jpg(cli, nyu_nyudmt, copy_of, tmp_path):
    root = copy_of(nyu_nyudmt)
    path = root / "images" / "train_00003.jpg"
    Image.open(path).resize((64, 48)).save(path, quality=95)
    words = "the image of sample train_00003 (train) is 48×64, but its targets are 24×32, like the other samples"
    _refused_everywhere(cli, tmp_path, "nyuv2", root, path, words, DataFormatError)
    code, text = cli("data", "verify", "nyuv2", "--root", root)
    assert "1 problem(s) found" in text, text  # blamed once, not once per target
    assert str(root / "segmentation") not in text.replace("\n", ""), "a target file was blamed"
