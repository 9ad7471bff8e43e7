"""`mtbench data synth` + `mtbench data verify`: passes on clean data, names the file on each corruption."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FACE_SIZE, NYU_SIZE
from PIL import Image

from mtbench.data.celebamask import ATTRIBUTE_FILE, IMAGES, MASKS


def test_synth_then_verify_nyuv2(cli, tmp_path):
    out = tmp_path / "nyu"
    code, text = cli(
        "data",
        "synth",
        "nyuv2-synth",
        "--out",
        out,
        "--n",
        8,
        "--seed",
        1,
        "--height",
        NYU_SIZE["height"],
        "--width",
        NYU_SIZE["width"],
    )
    assert code == 0, text
    code, text = cli("data", "verify", "nyuv2", "--root", out)
    assert code == 0, text
    assert "OK" in text and "SYNTHETIC" in text
    assert "train" in text and "6" in text and "val" in text


@pytest.mark.parametrize("layout", ["celebamask-official", "celebamask-parquet"])
def test_synth_then_verify_celebamask(cli, tmp_path, layout):
    out = tmp_path / "faces"
    code, text = cli(
        "data",
        "synth",
        "celebamask-synth",
        "--out",
        out,
        "--n",
        9,
        "--layout",
        layout,
        "--image-size",
        FACE_SIZE["image_size"],
        "--mask-size",
        FACE_SIZE["mask_size"],
    )
    assert code == 0, text
    code, text = cli("data", "verify", "celebamask", "--root", out)
    assert code == 0, text
    assert "OK" in text


def test_synth_refuses_real_dataset_and_nonempty_out(cli, tmp_path):
    code, text = cli("data", "synth", "nyuv2", "--out", tmp_path / "x")
    assert code == 1 and "real data set" in text
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    code, text = cli("data", "synth", "nyuv2-synth", "--out", tmp_path / "full", "--n", 4)
    assert code == 1 and "--overwrite" in text
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"


def _verify_fails_naming(cli, root: Path, dataset: str, path: Path, words: str) -> None:
    code, text = cli("data", "verify", dataset, "--root", root)
    flat = " ".join(text.split())
    assert code == 1, text
    assert str(path) in text.replace("\n", ""), f"{path} not named in:\n{text}"
    assert words in flat, f"{words!r} not in:\n{text}"


# --- NYU-v2, MTAN layout ------------------------------------------------------------------------------


def test_truncated_npy(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "train" / "depth" / "3.npy"
    path.write_bytes(path.read_bytes()[:100])
    _verify_fails_naming(cli, root, "nyuv2", path, "truncated or corrupt")


def test_wrong_shape(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "val" / "normal" / "0.npy"
    np.save(path, np.zeros((5, 7, 3), np.float32))
    _verify_fails_naming(cli, root, "nyuv2", path, "does not match its image size")
    np.save(path, np.zeros((24, 32), np.float32))
    _verify_fails_naming(cli, root, "nyuv2", path, "wrong shape")


def test_wrong_dtype(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "train" / "image" / "2.npy"
    np.save(path, np.zeros((24, 32, 3), np.int32))
    _verify_fails_naming(cli, root, "nyuv2", path, "wrong dtype")


def test_missing_file(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "train" / "label" / "5.npy"
    path.unlink()
    _verify_fails_naming(cli, root, "nyuv2", path, "missing semantic labels")


def test_missing_folder(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    shutil.rmtree(root / "val" / "depth")
    _verify_fails_naming(cli, root, "nyuv2", root / "val" / "depth", "missing folder")


def test_label_out_of_range(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "train" / "label" / "1.npy"
    labels = np.load(path)
    labels[0, 0] = 13
    np.save(path, labels)
    _verify_fails_naming(cli, root, "nyuv2", path, "labels out of range")


def test_non_unit_normals(cli, nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    path = root / "train" / "normal" / "0.npy"
    np.save(path, np.load(path) * 2.0)
    _verify_fails_naming(cli, root, "nyuv2", path, "not unit vectors")


# --- NYU-v2, NYUD-MT layout ---------------------------------------------------------------------------


def test_nyudmt_corrupt_jpeg_and_label_out_of_range(cli, nyu_nyudmt, copy_of):
    root = copy_of(nyu_nyudmt)
    image = sorted((root / "images").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:200])
    _verify_fails_naming(cli, root, "nyuv2", image, "cannot decode")
    image.unlink()
    _verify_fails_naming(cli, root, "nyuv2", image, "missing image")
    seg = sorted((root / "segmentation").glob("*.png"))[1]
    Image.fromarray(np.full((24, 32), 41, np.uint8)).save(seg)
    _verify_fails_naming(cli, root, "nyuv2", seg, "labels out of range")


# --- CelebAMask-HQ, official release ------------------------------------------------------------------


def test_celeba_truncated_mask_and_missing_masks(cli, face_official, copy_of):
    root = copy_of(face_official)
    mask = sorted((root / MASKS / "0").glob("*_skin.png"))[0]
    mask.write_bytes(mask.read_bytes()[:20])
    _verify_fails_naming(cli, root, "celebamask", mask, "cannot decode")
    shutil.rmtree(root / MASKS)
    _verify_fails_naming(cli, root, "celebamask", root / MASKS, "missing folder")


def test_celeba_wrong_mask_shape(cli, face_official, copy_of):
    root = copy_of(face_official)
    masks = sorted((root / MASKS / "0").glob("00000_*.png"))
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(masks[-1])
    _verify_fails_naming(cli, root, "celebamask", masks[-1], "size differs")


def test_celeba_bad_attribute_value(cli, face_official, copy_of):
    root = copy_of(face_official)
    path = root / ATTRIBUTE_FILE
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace(" -1", " 2", 1)
    path.write_text("\n".join(lines) + "\n")
    _verify_fails_naming(cli, root, "celebamask", path, "line 5 is malformed")


def test_celeba_missing_image(cli, face_official, copy_of):
    root = copy_of(face_official)
    path = root / IMAGES / "7.jpg"
    path.unlink()
    _verify_fails_naming(cli, root, "celebamask", path, "missing image")


def test_celeba_parquet_label_out_of_range(cli, tmp_path):
    from mtbench.data.celebamask import write_celeba_parquet

    labels = np.zeros((16, 16), np.uint8)
    labels[3, 3] = 19
    root = tmp_path / "pq"
    for split in ("train", "val", "test"):
        path = write_celeba_parquet(root, split, [(np.zeros((32, 32, 3), np.uint8), labels)])
    code, text = cli("data", "verify", "celebamask", "--root", root)
    assert code == 1 and "labels out of range" in text and str(path.parent) in text.replace("\n", "")


def test_celeba_mapping_non_integer_field_and_missing_header(cli, face_official, copy_of):
    from mtbench.data.celebamask import MAPPING_FILE

    root = copy_of(face_official)
    path = root / MAPPING_FILE
    lines = path.read_text().splitlines()
    broken = list(lines)
    broken[4] = broken[4].replace(broken[4].split()[1], "12x4", 1)
    path.write_text("\n".join(broken) + "\n")
    _verify_fails_naming(cli, root, "celebamask", path, "line 5 is malformed")
    path.write_text("\n".join(lines[1:]) + "\n")
    _verify_fails_naming(cli, root, "celebamask", path, "line 1 is a data line, not the header")
