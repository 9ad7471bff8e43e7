"""Readers of every real layout, on fixtures written in those layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtbench.data import synth_nyuv2
from mtbench.data.celebamask import (
    ATTRIBUTE_FILE,
    FACESEG19_TO_3,
    IMAGES,
    MAPPING_FILE,
    MASKS,
    CelebaOfficialReader,
    CelebaParquetReader,
)
from mtbench.data.constants import CELEBA_ATTRIBUTES, CELEBA_PARTS
from mtbench.data.layouts import detect_layout, open_reader
from mtbench.data.nyuv2 import MtanReader, NyudMtReader, NyuParquetReader
from mtbench.data.reader import SYNTH_MANIFEST, label_edges
from mtbench.data.synth import _sample_rng
from mtbench.errors import DataFormatError, DatasetNotFoundError


def test_layouts_are_detected(nyu_mtan, nyu_nyudmt, nyu_parquet, face_official, face_parquet):
    assert detect_layout("nyuv2", nyu_mtan) is MtanReader
    assert detect_layout("nyuv2", nyu_nyudmt) is NyudMtReader
    assert detect_layout("nyuv2", nyu_parquet) is NyuParquetReader
    assert detect_layout("celebamask", face_official) is CelebaOfficialReader
    assert detect_layout("celebamask", face_parquet) is CelebaParquetReader


def test_unknown_folder_and_missing_folder_say_what_to_do(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataFormatError, match="no known nyuv2 layout"):
        detect_layout("nyuv2", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="mtbench data synth"):
        detect_layout("nyuv2", tmp_path / "absent")


def _expected_scene(seed: int, index: int):
    return synth_nyuv2.render_scene(_sample_rng(seed, index), 24, 32)


def test_mtan_reader_returns_canonical_arrays_equal_to_the_generator(nyu_mtan):
    reader = MtanReader(nyu_mtan)
    assert reader.splits() == ("train", "val")
    assert reader.num_samples("train") == 12 and reader.num_samples("val") == 4
    sample = reader.read("val", 1, ("semantic13", "depth", "normal", "edge"))
    scene = _expected_scene(3, 12 + 1)  # val samples follow the 12 train samples
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype == np.float32
    np.testing.assert_array_equal(sample["image"], np.moveaxis(scene.image, -1, 0))
    np.testing.assert_array_equal(sample["semantic13"], scene.semantic13)
    assert sample["semantic13"].dtype == np.int64
    np.testing.assert_array_equal(sample["depth"][0], scene.depth)
    np.testing.assert_array_equal(sample["normal"], np.moveaxis(scene.normal, -1, 0))
    np.testing.assert_array_equal(sample["edge"], label_edges(scene.semantic13))
    assert reader.identity(content=False).synthetic
    assert reader.identity(content=False).dataset == "nyuv2-synth"


def test_mtan_reader_sorts_ids_numerically(nyu_mtan):
    ids = MtanReader(nyu_mtan).sample_ids("train")
    assert ids == [str(i) for i in range(12)]


def test_label_edges_hand_worked():
    labels = np.array([[0, 0, 1], [0, -1, 1], [2, 2, 1]])
    expected = np.array([[0, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    # (0,1)|(0,2) differ -> (0,1); (1,0) vs (2,0): 0 vs 2 -> (1,0) marked vertically; -1 never counts
    expected[1, 0] = 1
    expected[2, 1] = 1  # (2,1)=2 vs (2,2)=1
    np.testing.assert_array_equal(label_edges(labels)[0], expected)


def test_nyudmt_reader_maps_unlabeled_to_ignore_and_reads_edge_files(nyu_nyudmt):
    reader = NyudMtReader(nyu_nyudmt)
    assert reader.num_samples("train") == 12
    sample = reader.read("train", 2, ("semantic40", "depth", "normal", "edge"))
    scene = _expected_scene(3, 2)
    np.testing.assert_array_equal(sample["semantic40"], scene.semantic40 - 1)
    assert (sample["semantic40"] >= -1).all() and (sample["semantic40"] < 40).all()
    np.testing.assert_array_equal(sample["depth"][0], scene.depth)
    np.testing.assert_array_equal(sample["edge"][0], scene.edge)
    # JPEG: close to the rendered image, not equal
    assert np.abs(sample["image"] - np.moveaxis(scene.image, -1, 0)).mean() < 0.03


def test_nyudmt_png_zero_becomes_ignore(tmp_path):
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.array([[0, 1, 40], [2, 0, 5]], np.uint8)).save(tmp_path / "segmentation" / "a.png")
    (tmp_path / "gt_sets" / "train.txt").write_text("a\n")
    (tmp_path / "gt_sets" / "val.txt").write_text("a\n")  # both splits must exist to open the set
    labels = NyudMtReader(tmp_path).read("train", 0, ("semantic40",))["semantic40"]
    np.testing.assert_array_equal(labels, [[-1, 0, 39], [1, -1, 4]])


def test_nyu_parquet_mirror_equals_the_mtan_tree(nyu_mtan, nyu_parquet):
    mtan, parquet = MtanReader(nyu_mtan), NyuParquetReader(nyu_parquet)
    assert parquet.splits() == ("train", "val")
    for split in ("train", "val"):
        assert parquet.num_samples(split) == mtan.num_samples(split)
    targets = ("semantic13", "depth", "normal", "edge")
    a, b = mtan.read("train", 4, targets), parquet.read("train", 4, targets)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a[key].dtype == b[key].dtype


def _write_tiny_official(root: Path) -> None:
    """A hand-made official-layout folder: 3 images, overlapping masks, known attributes."""
    (root / IMAGES).mkdir(parents=True)
    (root / MASKS / "0").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(root / IMAGES / f"{k}.jpg")
    skin = np.zeros((4, 4), np.uint8)
    skin[:3, :3] = 255
    hair = np.zeros((4, 4), np.uint8)
    hair[0, :] = 255
    nose = np.zeros((4, 4), np.uint8)
    nose[1, 1] = 255
    for k in range(3):
        Image.fromarray(skin).save(root / MASKS / "0" / f"{k:05d}_skin.png")
    Image.fromarray(hair).save(root / MASKS / "0" / "00000_hair.png")
    Image.fromarray(nose).save(root / MASKS / "0" / "00000_nose.png")
    values = {0: {"Male": 1, "Smiling": -1}, 1: {"Male": -1, "Smiling": 1}, 2: {"Male": 1, "Smiling": 1}}
    lines = ["3", " ".join(CELEBA_ATTRIBUTES)]
    for k in range(3):
        lines.append(f"{k}.jpg " + " ".join(str(values[k].get(a, -1)) for a in CELEBA_ATTRIBUTES))
    (root / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")
    # k=0 -> train (orig < 162771), k=1 -> test (orig >= 182638), k=2 -> val
    (root / MAPPING_FILE).write_text(
        "idx orig_idx orig_file\n0 5 000006.jpg\n1 190000 190001.jpg\n2 170000 170001.jpg\n"
    )


def test_celeba_official_combines_masks_in_order_and_splits_by_mapping(tmp_path):
    _write_tiny_official(tmp_path)
    reader = CelebaOfficialReader(tmp_path)
    assert reader.size == 512  # no manifest: the real mask resolution
    reader = CelebaOfficialReader(tmp_path, size=4)
    assert {s: reader.sample_ids(s) for s in reader.splits()} == {"train": ["0"], "val": ["2"], "test": ["1"]}
    sample = reader.read("train", 0, ("faceseg19", "faceseg3", "attr:Male", "attr:Smiling"))
    skin, nose, hair = (CELEBA_PARTS.index(p) + 1 for p in ("skin", "nose", "hair"))
    expected = np.array([[hair] * 4, [skin, nose, skin, 0], [skin, skin, skin, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(sample["faceseg19"], expected)  # hair (later) overwrites skin
    np.testing.assert_array_equal(sample["faceseg3"], [[1] * 4, [2, 2, 2, 0], [2, 2, 2, 0], [0] * 4])
    assert sample["image"].shape == (3, 4, 4)  # resized to the mask resolution
    assert float(sample["attr:Male"]) == 1.0 and float(sample["attr:Smiling"]) == 0.0
    assert float(reader.read("test", 0, ("attr:Smiling",))["attr:Smiling"]) == 1.0


def test_faceseg3_mapping_table():
    assert FACESEG19_TO_3[0] == 0
    assert FACESEG19_TO_3[CELEBA_PARTS.index("hair") + 1] == 1
    assert FACESEG19_TO_3[CELEBA_PARTS.index("nose") + 1] == 2
    assert FACESEG19_TO_3[CELEBA_PARTS.index("cloth") + 1] == 0


def test_celeba_official_reader_on_synthetic_release(face_official):
    reader = CelebaOfficialReader(face_official)
    manifest = json.loads((face_official / SYNTH_MANIFEST).read_text())
    assert reader.size == manifest["mask_size"] == 16
    assert sum(reader.num_samples(s) for s in reader.splits()) == 24
    assert set(reader.splits()) == {"train", "val", "test"}
    sample = reader.read("train", 0, ("faceseg19", "attr:Eyeglasses"))
    assert sample["image"].shape == (3, 16, 16) and sample["faceseg19"].shape == (16, 16)
    assert sample["faceseg19"].max() < 19 and sample["attr:Eyeglasses"].shape == ()


def test_celeba_parquet_mirror_equals_the_official_masks(face_official, face_parquet):
    official, parquet = CelebaOfficialReader(face_official), CelebaParquetReader(face_parquet)
    assert parquet.splits() == official.splits()
    for split in official.splits():
        assert parquet.num_samples(split) == official.num_samples(split)
        a = official.read(split, 0, ("faceseg19", "faceseg3"))
        b = parquet.read(split, 0, ("faceseg19", "faceseg3"))
        np.testing.assert_array_equal(a["faceseg19"], b["faceseg19"])
        np.testing.assert_array_equal(a["faceseg3"], b["faceseg3"])
    with pytest.raises(DataFormatError, match="no target 'attr:Male'"):
        parquet.read("train", 0, ("attr:Male",))


def test_open_reader_rejects_a_layout_of_another_family(nyu_mtan):
    with pytest.raises(DataFormatError, match="belongs to nyuv2"):
        open_reader("celebamask", nyu_mtan, "nyuv2-mtan")


# --- which file a size mismatch blames; split checks of the parquet mirrors ----------------------------------


def test_nyudmt_targets_resized_together_are_blamed_when_the_image_matches_the_other_samples(nyu_nyudmt, copy_of):
    root = copy_of(nyu_nyudmt)
    sample = "train_00003"
    seg = root / "segmentation" / f"{sample}.png"
    Image.open(seg).resize((16, 12), Image.Resampling.NEAREST).save(seg)
    for folder in ("depth", "normals", "edge"):
        path = root / folder / f"{sample}.npy"
        np.save(path, np.load(path)[::2, ::2])
    reader = NyudMtReader(root)
    with pytest.raises(DataFormatError, match="restore this file") as caught:
        reader.read("train", 3, ("semantic40",))
    assert caught.value.path == seg
    with pytest.raises(DataFormatError, match="restore the target files of this sample") as caught:
        reader.read("train", 3, reader.targets())
    assert caught.value.path == seg


def test_mtan_wrong_size_image_is_blamed(nyu_mtan, copy_of):
    root = copy_of(nyu_mtan)
    image = root / "train" / "image" / "4.npy"
    np.save(image, np.zeros((12, 16, 3), np.float32))
    with pytest.raises(DataFormatError, match="its targets are 24×32, like the other samples") as caught:
        MtanReader(root).read("train", 4, ("depth",))
    assert caught.value.path == image


def test_parquet_mirror_with_a_missing_or_empty_split_cannot_be_opened(nyu_parquet, copy_of):
    import pyarrow.parquet as pq

    from mtbench.errors import SplitError

    root = copy_of(nyu_parquet)
    shard = next((root / "data").glob("val-*.parquet"))
    table = pq.read_table(shard)
    shard.unlink()
    with pytest.raises(SplitError, match="the val split is missing") as caught:
        open_reader("nyuv2", root)
    assert caught.value.path == root / "data" / "val-*.parquet"
    pq.write_table(table.slice(0, 0), shard)
    with pytest.raises(SplitError, match="the val split has no samples") as caught:
        open_reader("nyuv2", root)
    assert caught.value.path == shard
