"""Data stored compactly and once (issue 10): uint8 images, narrow label types, one image tensor per split.

The old loader (`mtbench.bench_memory.legacy_load`, a labelled copy of ``TensorSet.load`` before issue 10:
float32 images, the readers' dtypes, a stack of all samples) is the reference the compact storage must
reproduce bit for bit.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from mtbench.bench_memory import legacy_load
from mtbench.data.layouts import open_reader
from mtbench.data.reader import Reader
from mtbench.presets import budget
from mtbench.training import _UNIT_TABLE, MetaTestData, TensorSet, _unit_codes

CPU = torch.device("cpu")


def _reader(root: Path, family: str) -> Reader:
    return open_reader(family, root)


def _everything(data: TensorSet) -> dict[str, torch.Tensor]:
    keys = [k for k in data.tensors if k != "image"]
    return data.batch(range(len(data)), keys, CPU)


@pytest.mark.parametrize(
    ("fixture", "family", "image_type"),
    [
        ("face_official", "celebamask", torch.uint8),  # JPEG images
        ("nyu_nyudmt", "nyuv2", torch.uint8),  # JPEG images
        ("nyu_mtan", "nyuv2", torch.float32),  # .npy floats that are not k/255: kept as float32
    ],
)
def test_compact_storage_decodes_to_the_float_path_bit_for_bit(request, fixture, family, image_type):
    reader = _reader(request.getfixturevalue(fixture), family)
    targets = list(reader.targets())
    count = reader.num_samples("train")

    def read(i, wanted):
        return reader.read("train", i, wanted)

    old = legacy_load(read, count, targets)
    new = TensorSet.load(read, count, targets)
    assert new.tensors["image"].dtype == image_type
    decoded = _everything(new)
    assert decoded.keys() == old.keys()
    for key, value in old.items():
        assert decoded[key].dtype == value.dtype, key
        assert torch.equal(decoded[key], value), key  # exact, NaN-free data
    for key, stored in new.tensors.items():  # the narrow types
        if key.startswith(("semantic", "faceseg")):
            assert stored.dtype == torch.int8, key  # -1 = ignore and up to 127 classes
        elif key == "edge" or key.startswith("attr:"):
            assert stored.dtype == torch.uint8, key  # 0/1 maps and attributes
        elif key in ("depth", "normal"):
            assert stored.dtype == torch.float32, key
    assert new.nbytes < sum(v.untyped_storage().nbytes() for v in old.values())


def test_the_unit_table_is_the_readers_division():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(_UNIT_TABLE, codes.astype(np.float32) / 255.0)  # `to_chw_image`'s expression
    assert torch.equal(torch.from_numpy(_UNIT_TABLE), torch.arange(256, dtype=torch.float32) / 255.0)
    assert _unit_codes(np.array([0.0, 1.0], np.float32)).tolist() == [0, 255]
    assert _unit_codes(np.array([-0.0, 1.0], np.float32)) is None  # bit for bit: -0.0 has no code


def test_resizing_per_sample_matches_the_resized_stack(nyu_mtan, face_official):
    # float images (MTAN): every key bit for bit as the old full-resolution stack resized at once
    reader = _reader(nyu_mtan, "nyuv2")
    targets = list(reader.targets())
    count = reader.num_samples("train")

    def read(i, wanted):
        return reader.read("train", i, wanted)

    old = legacy_load(read, count, targets, (16, 20))
    new = _everything(TensorSet.load(read, count, targets, (16, 20)))
    for key, value in old.items():
        assert torch.equal(new[key], value), key

    # 8-bit images: the resized float's nearest code is kept (≤ 0.5/255 off); targets exact
    reader = _reader(face_official, "celebamask")
    targets = list(reader.targets())
    count = reader.num_samples("train")
    old = legacy_load(lambda i, wanted: reader.read("train", i, wanted), count, targets, (12, 12))
    data = TensorSet.load(lambda i, wanted: reader.read("train", i, wanted), count, targets, (12, 12))
    assert data.tensors["image"].dtype == torch.uint8
    new = _everything(data)
    nearest = torch.from_numpy(_UNIT_TABLE)[torch.round(old["image"] * 255).clamp(0, 255).long()]
    assert torch.equal(new["image"], nearest)
    assert (new["image"] - old["image"]).abs().max() <= 0.5 / 255 + 1e-7
    for key in targets:
        assert torch.equal(new[key], old[key]), key


def test_storage_widens_exactly_when_a_later_sample_does_not_fit():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    samples = [
        {
            "image": codes[0].astype(np.float32) / 255.0,
            "semantic13": rng.integers(-1, 13, (4, 5)).astype(np.int64),
            "edge": rng.integers(0, 2, (1, 4, 5)).astype(np.float32),
        },
        {
            "image": rng.random((3, 4, 5), dtype=np.float32),  # not k/255
            "semantic13": np.full((4, 5), 300, dtype=np.int64),  # beyond int8
            "edge": np.full((1, 4, 5), 0.5, dtype=np.float32),  # not integral
        },
    ]
    data = TensorSet.load(lambda i, _targets: samples[i], 2, ["semantic13", "edge"])
    assert data.tensors["image"].dtype == torch.float32
    assert data.tensors["semantic13"].dtype == torch.int16
    assert data.tensors["edge"].dtype == torch.float32
    decoded = _everything(data)
    for key in ("image", "semantic13", "edge"):
        assert torch.equal(decoded[key], torch.from_numpy(np.stack([s[key] for s in samples]))), key


def test_meta_test_sets_share_one_image_tensor_per_split_and_release_targets(nyu_mtan):
    reader = _reader(nyu_mtan, "nyuv2")
    train_count, test_count = reader.num_samples("train"), reader.num_samples("val")
    calls = collections.Counter()

    def read(split, i, wanted, **options):
        calls[split] += 1
        return reader.read(split, i, wanted, **options)

    train = TensorSet.load(lambda i, wanted: read("train", i, wanted), train_count, ["semantic13", "normal"])
    calls.clear()
    data = MetaTestData(
        read,
        {"train": ("train", train_count), "test": ("val", test_count)},
        given={"train": train},
        together={"train": ["depth", "edge"]},  # two held-out tasks: one pass for both
    )
    image = train.tensors["image"].data_ptr()
    seen = data.get("train", "semantic13")
    assert seen.tensors["image"].data_ptr() == image
    assert seen.tensors["semantic13"].data_ptr() == train.tensors["semantic13"].data_ptr()
    assert calls["train"] == 0  # a seen task's training set is the training set's own tensors
    depth, edge = data.get("train", "depth"), data.get("train", "edge")
    assert depth.tensors["image"].data_ptr() == edge.tensors["image"].data_ptr() == image
    assert calls["train"] == train_count and data.passes["train"] == 1  # the held-out targets: one pass
    assert len(depth) == train_count and depth.batch([0], ["depth"], CPU)["depth"].shape == (1, 1, 24, 32)

    tests = [data.get("test", "semantic13"), data.get("test", "depth"), data.get("test", "normal")]
    assert len({t.tensors["image"].data_ptr() for t in tests}) == 1  # one image tensor for the test split
    assert data.passes["test"] == 3 and calls["val"] == 3 * test_count  # targets per task
    assert "image" not in data.targets["test"]["depth"].tensors  # per-task sets hold targets only

    gone = weakref.ref(data.targets["test"]["depth"].tensors["depth"])
    del tests, depth
    data.done("depth")
    gc.collect()
    assert gone() is None and "depth" not in data.targets["test"] and "depth" not in data.targets["train"]
    assert "edge" in data.targets["train"]  # another task's targets stay until that task is done
    images = weakref.ref(data.images["test"].tensors["image"])
    data.close()
    gc.collect()
    assert images() is None
    assert train.tensors["image"].data_ptr() == image  # the training set is the run's, untouched


@pytest.mark.e2e
def test_a_run_reads_the_training_split_at_most_twice(nyu_mtan, tmp_path, monkeypatch):
    """Before issue 10 a run read the training split 1 + T times (T tasks: 5 here) and decoded every image each
    time; now it reads it once (+1 with held-out tasks, without images) and decodes each image once."""
    from mtbench.runner import RunRequest, execute

    calls: collections.Counter[str] = collections.Counter()
    read = Reader.read

    def spy(self, split, index, targets=(), **options):
        calls[split] += 1
        calls[f"{split} images"] += options.get("image", True)
        return read(self, split, index, targets, **options)

    monkeypatch.setattr(Reader, "read", spy)
    reader, smoke = _reader(nyu_mtan, "nyuv2"), budget("smoke")
    validation = smoke.validation_samples  # held out of the training split, read by the protocol only
    train = min(reader.num_samples("train") - validation, smoke.max_train_samples or reader.num_samples("train"))
    test = min(reader.num_samples("val"), smoke.max_test_samples or reader.num_samples("val"))
    calls.clear()
    request = RunRequest(method="ew", data_root=nyu_mtan, budget="smoke", out=tmp_path / "run", unseen=("depth",))
    execute(dataclasses.replace(request, reference=False))
    # training set + one pass for the held-out task's targets, + sample 0 once for the memory estimate, + the
    # validation samples: one pass per task (4), images decoded in the first only
    assert calls["train"] == 2 * train + 1 + 4 * validation
    assert calls["train images"] == train + 1 + validation  # the held-out targets' pass decodes no image
    assert calls["val"] == 4 * test  # one pass per task (targets per task) ...
    assert calls["val images"] == test  # ... and the images decoded once, stored once


def test_bench_memory_command_runs_at_tiny_n(cli):
    code, output = cli(
        *("bench", "memory", "--n", "2", "--case", "nyuv2-nyudmt", "--nyu-size", "12x16", "--resolution", "8"),
        *("--no-compare", "--no-stream", "--repeats", "1"),
    )
    assert code == 0, output
    for text in ("peak RSS (4n)", "MiB/sample", "compact", "795", "GiB"):
        assert text in output


def test_memory_results_keep_the_median_child_and_the_spread():
    from mtbench.bench_memory import MemoryResult, Peak, default_cases

    def peak(samples: int, mib: int) -> Peak:
        return Peak(samples, 0, mib * 1024, 0, 1.0)

    result = MemoryResult.of(
        default_cases()[0], "compact", (8, 8), [peak(2, 500), peak(2, 430), peak(2, 470)], [peak(8, 560), peak(8, 520)]
    )
    assert (result.small.peak_mib, result.large.peak_mib) == (470, 560)  # the median; of two, the upper one
    assert result.ratio == 560 / 470 and result.slope_mib == (560 - 470) / 6
    assert MemoryResult.spread_text(result.small_all) == " (430–500)"
    assert MemoryResult.spread_text(result.small_all[:1]) == ""
