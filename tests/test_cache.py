"""`mtbench data prepare`: the Arrow cache reproduces the raw reader exactly and is fingerprinted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtbench.data.cache import CACHE_META, ArrowCacheReader, find_prepared, prepare, read_index
from mtbench.data.celebamask import CelebaOfficialReader
from mtbench.data.layouts import open_reader
from mtbench.data.nyuv2 import MtanReader, NyudMtReader


@pytest.mark.parametrize(
    "fixture,reader_cls",
    [("nyu_mtan", MtanReader), ("nyu_nyudmt", NyudMtReader), ("face_official", CelebaOfficialReader)],
)
def test_cache_equals_raw_reader(request, tmp_path, fixture, reader_cls):
    raw = reader_cls(request.getfixturevalue(fixture))
    prepared = prepare(raw, cache_root=tmp_path)
    cache = ArrowCacheReader(prepared.path)
    assert cache.splits() == raw.splits() and cache.targets() == raw.targets()
    for split in raw.splits():
        assert cache.num_samples(split) == raw.num_samples(split)
        assert cache.sample_ids(split) == raw.sample_ids(split)
        for index in (0, raw.num_samples(split) - 1):
            a, b = raw.read(split, index, raw.targets()), cache.read(split, index, raw.targets())
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype, key
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    batch = cache.read_batch(raw.splits()[0], [0, 1], raw.targets()[:1])
    assert batch["image"].shape[0] == 2


def test_cache_identity_fingerprint_and_index(nyu_mtan, copy_of, tmp_path):
    root = copy_of(nyu_mtan)
    first = prepare(MtanReader(root), cache_root=tmp_path)
    assert first.identity.synthetic and first.identity.dataset == "nyuv2-synth"
    assert len(first.identity.fingerprint) == 64
    meta = json.loads((first.path / CACHE_META).read_text())
    assert meta["identity"]["generator"]["generator"] == "mtbench.data.synth_nyuv2"
    assert find_prepared("nyuv2-synth", tmp_path) == first.path
    assert find_prepared("nyuv2", tmp_path) is None  # synthetic never passes for the real data set
    cache_identity = ArrowCacheReader(first.path).identity()
    assert cache_identity.fingerprint == first.identity.fingerprint and cache_identity.synthetic

    again = prepare(MtanReader(root), cache_root=tmp_path)
    assert again.identity.fingerprint == first.identity.fingerprint  # deterministic
    depth = root / "train" / "depth" / "0.npy"
    array = np.load(depth)
    array[0, 0, 0] += 0.5
    np.save(depth, array)
    changed = prepare(MtanReader(root), cache_root=tmp_path)
    assert changed.identity.fingerprint != first.identity.fingerprint
    assert read_index(tmp_path)["nyuv2-synth"]["fingerprint"] == changed.identity.fingerprint


def test_failed_prepare_leaves_nothing_behind(nyu_mtan, copy_of, tmp_path):
    root = copy_of(nyu_mtan)
    (root / "val" / "depth" / "2.npy").write_bytes(b"garbage")
    cache_root = tmp_path / "cache"
    with pytest.raises(Exception, match="2.npy"):
        prepare(MtanReader(root), cache_root=cache_root)
    leftovers = [p for p in (cache_root / "data").rglob("*") if p.is_dir()]
    assert leftovers == [cache_root / "data" / "nyuv2-synth"]  # the parent only; no partial cache
    assert find_prepared("nyuv2-synth", cache_root) is None


def test_prepare_cli_then_open_cache_by_detection(cli, nyu_mtan, tmp_path):
    code, text = cli("data", "prepare", "nyuv2", "--from", nyu_mtan, "--cache", tmp_path)
    assert code == 0, text
    assert "synthetic" in text and "never as the real nyuv2" in text
    path = find_prepared("nyuv2-synth", tmp_path)
    reader = open_reader("nyuv2", path)
    assert isinstance(reader, ArrowCacheReader) and reader.identity().synthetic
    code, text = cli("data", "verify", "nyuv2", "--root", path)
    assert code == 0, text


def _rewrite_meta(path, meta):
    """Write edited cache metadata as `prepare` would (with the CRC-32 of its content), so the edit itself is read."""
    from mtbench.data.checksums import META_CHECK, meta_check

    meta[META_CHECK] = meta_check(meta)
    path.write_text(json.dumps(meta))


def test_cache_with_a_missing_or_empty_split_cannot_be_opened(nyu_mtan, tmp_path):
    from mtbench.errors import SplitError

    prepared = prepare(MtanReader(nyu_mtan), cache_root=tmp_path)
    meta_path = prepared.path / CACHE_META
    meta = json.loads(meta_path.read_text())
    assert meta["required_splits"] == ["train", "val"]
    meta["ids"]["val"] = []
    _rewrite_meta(meta_path, meta)
    with pytest.raises(SplitError, match="the val split has no samples") as caught:
        open_reader("nyuv2", prepared.path)
    assert caught.value.path == prepared.path / "val"
    meta["split_order"] = ["train"]
    _rewrite_meta(meta_path, meta)
    with pytest.raises(SplitError, match="the val split is missing"):
        ArrowCacheReader(prepared.path)


def test_mapped_split_reads_what_the_datasets_formatter_reads(tmp_path):
    """The cache's direct memory-mapped read against ``datasets``' own numpy formatter: every row and column of a
    split saved as three files (rows located across record batches), fixed-shape arrays and plain values."""
    import datasets

    from mtbench.data.cache import MappedSplit

    rng = np.random.default_rng(0)
    rows = 37
    columns = {
        "image": rng.integers(0, 256, (rows, 3, 5, 4), dtype=np.uint8),
        "depth": rng.standard_normal((rows, 1, 5, 4)).astype(np.float32),
        "semantic13": rng.integers(-1, 13, (rows, 5, 4), dtype=np.int8),
        "attr:smiling": rng.integers(0, 2, rows, dtype=np.int8),
    }
    features = datasets.Features(
        {
            "image": datasets.Array3D((3, 5, 4), "uint8"),
            "depth": datasets.Array3D((1, 5, 4), "float32"),
            "semantic13": datasets.Array2D((5, 4), "int8"),
            "attr:smiling": datasets.Value("int8"),
        }
    )
    def generate():
        for index in range(rows):
            yield {name: values[index] for name, values in columns.items()}

    saved = datasets.Dataset.from_generator(
        generate, features=features, writer_batch_size=5, cache_dir=str(tmp_path / "hf")
    )
    saved.save_to_disk(str(tmp_path / "train"), num_shards=3)
    assert len(json.loads((tmp_path / "train" / "state.json").read_text())["_data_files"]) == 3
    reference = datasets.load_from_disk(str(tmp_path / "train")).with_format("numpy")
    split = MappedSplit(tmp_path / "train")
    assert len(split) == rows and len(split.starts) - 1 >= 3  # a record batch per file at least
    names = tuple(columns)
    for index in range(rows):
        mine, theirs = split.row(index, names), reference[index]
        for name in names:
            assert mine[name].shape == np.asarray(theirs[name]).shape, name
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=f"{name} row {index}")
            np.testing.assert_array_equal(mine[name], columns[name][index], err_msg=f"{name} row {index}")
    picked = [36, 0, 12, 12, 25]
    stacked = split.rows(picked, names)
    for name in names:
        np.testing.assert_array_equal(stacked[name], columns[name][picked], err_msg=name)
    with pytest.raises(IndexError):
        split.row(rows, names)
    # pickled as its folder (a spawned worker maps the files again), never as the arrays
    import pickle

    blob = pickle.dumps(split)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    for name in names:
        np.testing.assert_array_equal(again.row(36, names)[name], columns[name][36])


def test_a_truncated_cache_file_is_named(nyu_mtan, tmp_path):
    from mtbench.data.checksums import CacheIntegrityError

    path = prepare(MtanReader(nyu_mtan), cache_root=tmp_path).path
    (arrow,) = (path / "train").glob("*.arrow")
    size = arrow.stat().st_size
    arrow.write_bytes(arrow.read_bytes()[: size // 2])
    with pytest.raises(CacheIntegrityError, match="damaged cache file: truncated") as caught:
        ArrowCacheReader(path)
    assert caught.value.path == arrow
    assert caught.value.expected == f"{size} bytes" and caught.value.found == f"{size // 2} bytes"
    assert "mtbench data prepare nyuv2-synth --rebuild" in caught.value.fix
