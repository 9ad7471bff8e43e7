"""The data layer's economies: target-only reads (``image=False``), the compact Arrow cache (format 2, and
format 1 still read), and synthetic runs read through an Arrow cache like real ones."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from mtbench.data import cache as cache_module
from mtbench.data.cache import (
    CACHE_FORMAT,
    CACHE_META,
    ArrowCacheReader,
    CacheValueError,
    MappedSplit,
    prepare,
)
from mtbench.data.celebamask import FACESEG19_TO_3, CelebaOfficialReader, CelebaParquetReader
from mtbench.data.io import quiet_datasets
from mtbench.data.layouts import open_reader
from mtbench.data.nyuv2 import MtanReader, NyudMtReader, NyuParquetReader
from mtbench.data.reader import Reader, label_edges
from mtbench.episodes import TaskView
from mtbench.errors import DataFormatError

RAW_LAYOUTS = [
    ("nyu_mtan", MtanReader),
    ("nyu_nyudmt", NyudMtReader),
    ("nyu_parquet", NyuParquetReader),
    ("face_official", CelebaOfficialReader),
    ("face_parquet", CelebaParquetReader),
]


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _no_image_decoding(monkeypatch: pytest.MonkeyPatch, reader: Reader) -> None:
    """Any image decode of ``reader`` fails the test (the cache: any selection of its image column)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(reader, "_read_image", refuse)
    if isinstance(reader, ArrowCacheReader):
        for name in ("row", "rows"):
            read = getattr(MappedSplit, name)

            def no_image_column(split, where, columns, read=read):
                assert "image" not in columns, columns
                return read(split, where, columns)

            monkeypatch.setattr(MappedSplit, name, no_image_column)


# --- 1. target-only reads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [False, True], ids=["raw", "arrow-cache"])
@pytest.mark.parametrize("fixture,reader_cls", RAW_LAYOUTS)
def test_read_without_image_gives_the_same_targets_and_decodes_no_image(
    request, tmp_path, monkeypatch, fixture, reader_cls, cached
):
    raw = reader_cls(request.getfixturevalue(fixture))
    reader = ArrowCacheReader(prepare(raw, cache_root=tmp_path).path) if cached else raw
    targets = raw.targets()
    expected = {
        (split, index): raw.read(split, index, targets)
        for split in raw.splits()
        for index in (0, raw.num_samples(split) - 1)
    }
    _no_image_decoding(monkeypatch, reader)
    for (split, index), full in expected.items():
        for wanted in (targets, targets[::-1], targets[-1:]):
            sample = reader.read(split, index, wanted, image=False)
            assert "image" not in sample
            _same(sample, {t: full[t] for t in wanted})
    if cached:
        batch = reader.read_batch(raw.splits()[0], [0, 1], targets, image=False)
        assert "image" not in batch
        for target in targets:
            np.testing.assert_array_equal(batch[target][1], raw.read(raw.splits()[0], 1, (target,))[target])


def test_task_view_passes_image_false_through(nyu_mtan, monkeypatch):
    from mtbench import catalog

    reader = MtanReader(nyu_mtan)
    seen = [catalog.task("nyuv2", "semseg"), catalog.task("nyuv2", "normal")]
    view = TaskView(reader, "train", seen, [catalog.task("nyuv2", "depth")])
    full = view.read(2, ["semantic13", "normal"])
    _no_image_decoding(monkeypatch, reader)
    _same(view.read(2, ["semantic13", "normal"], image=False), {k: full[k] for k in ("semantic13", "normal")})


def test_tensor_set_without_images_reads_no_image(nyu_mtan, monkeypatch):
    from mtbench.training import MetaTestData, TensorSet

    reader = MtanReader(nyu_mtan)
    with_images = TensorSet.load(lambda i, t: reader.read("val", i, t), 3, ["depth", "edge"])
    _no_image_decoding(monkeypatch, reader)
    data = TensorSet.load(lambda i, t, **o: reader.read("val", i, t, **o), 3, ["depth", "edge"], images=False)
    assert "image" not in data.tensors
    for key in ("depth", "edge"):
        assert data.tensors[key].equal(with_images.tensors[key]), key
    meta = MetaTestData(reader.read, {"test": ("val", 3)}, given={"test": with_images})
    assert meta.get("test", "semantic13").tensors["semantic13"].shape[0] == 3  # a targets-only pass


def test_wrong_size_image_is_caught_from_its_header_without_decoding_it(nyu_mtan, copy_of, monkeypatch):
    root = copy_of(nyu_mtan)
    image = root / "train" / "image" / "4.npy"
    np.save(image, np.zeros((12, 16, 3), np.float32))
    reader = MtanReader(root)
    _no_image_decoding(monkeypatch, reader)
    with pytest.raises(DataFormatError, match="its targets are 24×32, like the other samples") as caught:
        reader.read("train", 4, ("depth",), image=False)
    assert caught.value.path == image
    assert reader.read("train", 3, ("depth",), image=False)["depth"].shape == (1, 24, 32)


def test_wrong_size_target_is_blamed_without_decoding_the_image(nyu_nyudmt, copy_of, monkeypatch):
    from PIL import Image

    root = copy_of(nyu_nyudmt)
    seg = root / "segmentation" / "train_00003.png"
    Image.open(seg).resize((16, 12), Image.Resampling.NEAREST).save(seg)
    reader = NyudMtReader(root)
    _no_image_decoding(monkeypatch, reader)
    with pytest.raises(DataFormatError, match="semantic40 of sample train_00003 .* does not match its image") as caught:
        reader.read("train", 3, ("depth", "semantic40"), image=False)
    assert caught.value.path == seg


def test_without_image_files_targets_of_different_sizes_are_caught(nyu_parquet, monkeypatch):
    """The parquet mirror names no image file: without the image, the targets are checked against each other."""
    reader = NyuParquetReader(nyu_parquet)
    assert reader.sample_files("train", 2) is None
    read_target = reader._read_target

    def smaller_depth(split, index, target):
        value = read_target(split, index, target)
        return value[:, ::2, ::2] if (target, index) == ("depth", 2) else value

    monkeypatch.setattr(reader, "_read_target", smaller_depth)
    _no_image_decoding(monkeypatch, reader)
    with pytest.raises(DataFormatError, match="depth of sample 2 \\(train\\) does not match the size of its normal"):
        reader.read("train", 2, ("normal", "depth"), image=False)
    assert reader.read("train", 2, ("depth",), image=False)["depth"].shape == (1, 12, 16)  # nothing to compare
    monkeypatch.undo()
    monkeypatch.setattr(reader, "_read_target", smaller_depth)
    with pytest.raises(DataFormatError, match="does not match its image size"):
        reader.read("train", 2, ("depth",))  # with the image: checked against it, as before


# --- 2. Arrow cache format 2 ----------------------------------------------------------------------------------


def test_format_2_stores_narrow_label_maps_and_derived_targets_once(face_official, nyu_mtan, nyu_nyudmt, tmp_path):
    face = json.loads((prepare(CelebaOfficialReader(face_official), cache_root=tmp_path).path / CACHE_META).read_text())
    assert face["format"] == CACHE_FORMAT == 2
    assert face["columns"]["faceseg19"] == "uint8" and "faceseg3" not in face["columns"]
    assert face["derived"]["faceseg3"] == {"from": "faceseg19", "table": FACESEG19_TO_3.tolist(), "dtype": "int64"}
    assert face["canonical"]["faceseg3"] == face["canonical"]["faceseg19"] == "int64"
    assert face["columns"]["image"] == "uint8" and face["columns"]["attr:Male"] == "int8"
    assert "faceseg3" in face["targets"]  # still a target of the cache
    mtan = json.loads((prepare(MtanReader(nyu_mtan), cache_root=tmp_path).path / CACHE_META).read_text())
    assert mtan["columns"]["semantic13"] == "int8" and "edge" not in mtan["columns"]
    assert mtan["derived"]["edge"] == {"from": "semantic13", "function": "label_edges"}
    nyudmt = json.loads((prepare(NyudMtReader(nyu_nyudmt), cache_root=tmp_path).path / CACHE_META).read_text())
    assert nyudmt["columns"]["semantic40"] == "int8" and nyudmt["columns"]["edge"] == "uint8"


@pytest.mark.parametrize("fixture,reader_cls", RAW_LAYOUTS)
def test_format_2_cache_reads_back_exactly_what_the_reader_gives(request, tmp_path, fixture, reader_cls):
    raw = reader_cls(request.getfixturevalue(fixture))
    cache = ArrowCacheReader(prepare(raw, cache_root=tmp_path).path)
    assert cache.targets() == raw.targets() and cache.target_sources == raw.target_sources
    for split in raw.splits():
        indices = list(range(raw.num_samples(split)))
        for index in indices:
            _same(cache.read(split, index, raw.targets()), raw.read(split, index, raw.targets()))
        derived = list(cache.derived_targets)
        if derived:  # a derived target alone: its source is read, not returned
            _same(cache.read(split, 0, derived), raw.read(split, 0, derived))
        batch = cache.read_batch(split, indices, raw.targets())
        for key, value in batch.items():
            np.testing.assert_array_equal(value, np.stack([raw.read(split, i, raw.targets())[key] for i in indices]))
            assert value.dtype == raw.read(split, 0, raw.targets())[key].dtype


def test_derived_targets_equal_the_readers_own_derivation(face_official, face_parquet, nyu_mtan, nyu_parquet):
    """`Reader.read` derives faceseg3/edge from the source it read; the reader's own `_read_target` agrees."""
    for reader in (
        CelebaOfficialReader(face_official),
        CelebaParquetReader(face_parquet),
        MtanReader(nyu_mtan),
        NyuParquetReader(nyu_parquet),
    ):
        for target, (source, _) in reader.derived_targets.items():
            for index in range(3):
                own = reader._read_target("train", index, target)
                _same({target: reader.read("train", index, (source, target))[target]}, {target: own})
    labels = CelebaOfficialReader(face_official).read("train", 0, ("faceseg19",))["faceseg19"]
    np.testing.assert_array_equal(
        CelebaOfficialReader(face_official)._read_target("train", 0, "faceseg3"), FACESEG19_TO_3[labels]
    )
    labels13 = MtanReader(nyu_mtan).read("train", 0, ("semantic13",))["semantic13"]
    np.testing.assert_array_equal(MtanReader(nyu_mtan)._read_target("train", 0, "edge"), label_edges(labels13))


def test_a_label_that_does_not_fit_its_column_is_refused_naming_the_sample(nyu_mtan, tmp_path):
    class Wider(MtanReader):  # declares -1..12 (int8) but one sample holds 200
        def _read_target(self, split, index, target):
            value = super()._read_target(split, index, target)
            if (split, index, target) == ("val", 1, "semantic13"):
                value = value.copy()
                value[0, 0] = 200
            return value

    with pytest.raises(
        CacheValueError, match=r"semantic13 of sample 1 \(val\) does not fit the cache's int8"
    ) as caught:
        prepare(Wider(nyu_mtan), cache_root=tmp_path)
    assert "values in -128..127" in str(caught.value) and "..200" in str(caught.value)
    assert caught.value.path == nyu_mtan / "val" / "label" / "1.npy"
    assert not [p for p in (tmp_path / "data").rglob(CACHE_META)]  # nothing half-written


def test_a_false_derivation_is_refused(face_official, tmp_path):
    class Lying(CelebaOfficialReader):  # says faceseg3 is derived from faceseg19, but reads something else
        def read(self, split, index, targets=(), *, image=True):
            sample = super().read(split, index, targets, image=image)
            if "faceseg3" in sample and index == 2:
                sample["faceseg3"] = np.zeros_like(sample["faceseg3"])
            return sample

    with pytest.raises(DataFormatError, match="is not the derivation of its faceseg19"):
        prepare(Lying(face_official), cache_root=tmp_path)


def _format_1_dtype(reader: Reader, name: str) -> str:
    """The column type format 1 stored: 8-bit images as uint8, every label map as int16, other targets as now."""
    if name == "image":
        return "uint8" if reader.stores_uint8_images else "float32"
    kind = reader.kind_of(name)
    return "int16" if kind.dtype.startswith("int") else kind.cache_dtype or kind.dtype


def _write_format_1(reader: Reader, path: Path) -> Path:
    """A cache exactly as format 1 wrote it: label maps int16, every target its own column, no dtypes recorded."""
    import datasets

    quiet_datasets()
    targets = reader.targets()
    columns = {name: _format_1_dtype(reader, name) for name in ("image", *targets)}

    def encode(name: str, value: np.ndarray) -> np.ndarray:
        dtype = columns[name]
        return np.round(value * 255.0).astype(np.uint8) if name == "image" and dtype == "uint8" else value.astype(dtype)

    for split in reader.splits():
        first = reader.read(split, 0, targets)
        features = datasets.Features({n: cache_module._feature(np.asarray(v), columns[n]) for n, v in first.items()})

        def rows(split: str = split):
            for index in range(reader.num_samples(split)):
                yield {n: encode(n, v) for n, v in reader.read(split, index, targets).items()}

        datasets.Dataset.from_generator(
            rows, features=features, cache_dir=str(path / ".hf"), fingerprint=uuid.uuid4().hex
        ).save_to_disk(str(path / split))
    meta = {
        "format": 1,
        "identity": reader.identity().to_dict(),
        "source": str(reader.root),
        "target_sources": reader.target_sources,
        "targets": list(targets),
        "columns": columns,
        "splits": {s: reader.num_samples(s) for s in reader.splits()},
        "split_order": list(reader.splits()),
        "required_splits": list(reader.required_splits),
        "ids": {s: reader.sample_ids(s) for s in reader.splits()},
        "prepared_at": "2025-01-01T00:00:00+00:00",
    }
    (path / CACHE_META).write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("fixture,reader_cls", [("face_official", CelebaOfficialReader), ("nyu_mtan", MtanReader)])
def test_a_format_1_cache_is_still_read_exactly(request, tmp_path, monkeypatch, fixture, reader_cls):
    raw = reader_cls(request.getfixturevalue(fixture))
    old = ArrowCacheReader(_write_format_1(raw, tmp_path / "old"))
    assert old.format == 1 and not old.derived_targets
    assert old.stored.get("faceseg3", old.stored.get("semantic13")) == "int16"
    for split in raw.splits():
        for index in range(raw.num_samples(split)):
            _same(old.read(split, index, raw.targets()), raw.read(split, index, raw.targets()))
    _no_image_decoding(monkeypatch, old)
    _same(
        old.read(raw.splits()[0], 0, raw.targets(), image=False),
        raw.read(raw.splits()[0], 0, raw.targets(), image=False),
    )


def test_a_cache_of_a_newer_format_is_refused(nyu_mtan, tmp_path):
    path = prepare(MtanReader(nyu_mtan), cache_root=tmp_path).path
    meta = json.loads((path / CACHE_META).read_text())
    meta["format"] = CACHE_FORMAT + 1
    (path / CACHE_META).write_text(json.dumps(meta))
    with pytest.raises(DataFormatError, match="made by a newer mtbench"):
        ArrowCacheReader(path)


# --- 3. synthetic sets through the Arrow cache ----------------------------------------------------------------


def _tiny(samples: int = 8):
    from mtbench.presets import budget

    return dataclasses.replace(budget("smoke"), synth_samples=samples)


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """A cache root of the test's own: these tests generate, edit and prepare synthetic sets."""
    monkeypatch.setenv("MTBENCH_HOME", str(tmp_path / "home"))


def test_a_synthetic_run_reads_its_set_through_an_arrow_cache_prepared_once(own_home, monkeypatch):
    from mtbench.data.resolve import open_reader as runner_open_reader
    from mtbench.data.resolve import resolve_data, synthetic_path

    notices: list[str] = []
    spec, reader = resolve_data("nyuv2-synth", None, _tiny(), notices.append)
    assert isinstance(reader, ArrowCacheReader)
    generated, _ = synthetic_path(spec, _tiny())
    raw = runner_open_reader(spec.family, generated)
    assert reader.meta["source"] == str(generated.resolve())
    ours, theirs = reader.identity().to_dict(), raw.identity(content=True).to_dict()
    assert ours.pop("layout") == f"arrow-cache({theirs.pop('layout')})" == "arrow-cache(nyuv2-mtan)"
    assert ours.pop("root") == str(reader.root.resolve()) and theirs.pop("root") == str(generated.resolve())
    assert ours == theirs  # dataset, family, synthetic, generator manifest, fingerprint and its kind
    assert ours["synthetic"] is True and ours["generator"]["generator"] == "mtbench.data.synth_nyuv2"
    for split in raw.splits():
        for index in range(raw.num_samples(split)):
            _same(reader.read(split, index, raw.targets()), raw.read(split, index, raw.targets()))
    assert sum("preparing the Arrow cache" in n for n in notices) <= 1

    def no_prepare(*_args, **_kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(cache_module, "prepare", no_prepare)
    again_notices: list[str] = []
    _, again = resolve_data("nyuv2-synth", None, _tiny(), again_notices.append)
    assert again.root == reader.root and not any("preparing" in n for n in again_notices)


def test_another_generated_set_never_reuses_a_cache(own_home):
    from mtbench.data.resolve import resolve_data, synthetic_path

    spec, first = resolve_data("nyuv2-synth", None, _tiny(8))
    _, other = resolve_data("nyuv2-synth", None, _tiny(9))  # another budget: another generated set
    assert other.root != first.root and other.identity().fingerprint != first.identity().fingerprint
    # the same folder with another content (regenerated, or edited): another fingerprint, another cache
    generated, _ = synthetic_path(spec, _tiny(8))
    depth = generated / "train" / "depth" / "0.npy"
    array = np.load(depth)
    array[0, 0, 0] += 0.5
    np.save(depth, array)
    before = first.read("train", 0, ("depth",))["depth"][0, 0, 0]  # maps the old cache's training split
    _, changed = resolve_data("nyuv2-synth", None, _tiny(8))
    assert changed.root != first.root
    assert changed.read("train", 0, ("depth",))["depth"][0, 0, 0] == array[0, 0, 0] != before
    # the old content's cache is gone (nothing can ask for it again); the other set's cache stays, and a reader
    # that had the old cache open still reads it
    assert not first.root.exists() and other.root.exists()
    assert first.read("train", 0, ("depth",))["depth"][0, 0, 0] == before


def test_a_new_generator_version_never_reads_the_stand_in_of_the_old_one(own_home, monkeypatch):
    """A generator whose output changed (its version bumped) generates its own stand-in: the folder written by the
    old version, same sizes and seed, is neither read nor replaced."""
    from dataclasses import replace

    from mtbench import catalog
    from mtbench.data import synth_nyuv2
    from mtbench.data.resolve import resolve_data, synthetic_path

    spec, old = resolve_data("nyuv2-synth", None, _tiny(8))
    old_folder, _ = synthetic_path(spec, _tiny(8))
    assert old.identity().generator["generator_version"] == synth_nyuv2.GENERATOR_VERSION == spec.generator_version
    bumped = replace(spec, generator_version=spec.generator_version + "-next")
    monkeypatch.setattr(catalog, "dataset", lambda name: bumped if name == "nyuv2-synth" else spec)
    _, new = resolve_data("nyuv2-synth", None, _tiny(8))
    new_folder, _ = synthetic_path(bumped, _tiny(8))
    assert new_folder != old_folder and new_folder.is_dir() and old_folder.is_dir()
    assert new.identity().generator["generator_version"] == synth_nyuv2.GENERATOR_VERSION  # what the code wrote
    assert new.root != old.root


def test_celebamask_synth_through_the_cache_and_data_root_read_directly(own_home):
    from mtbench.data.resolve import open_reader as runner_open_reader
    from mtbench.data.resolve import resolve_data, synthetic_path

    spec, reader = resolve_data("celebamask-synth", None, _tiny(8))
    assert isinstance(reader, ArrowCacheReader)
    assert reader.identity().layout == "arrow-cache(celebamask-official)" and reader.identity().synthetic
    generated, _ = synthetic_path(spec, _tiny(8))
    raw = runner_open_reader(spec.family, generated)
    for split in raw.splits():
        _same(reader.read(split, 0, raw.targets()), raw.read(split, 0, raw.targets()))
    _, direct = resolve_data("celebamask-synth", generated, _tiny(8))  # --data-root: the folder as it is
    assert isinstance(direct, CelebaOfficialReader) and direct.root == generated
    assert open_reader("celebamask", reader.root).layout == "arrow-cache"


def test_a_reader_overriding_read_without_the_image_keyword_is_refused_when_defined():
    from mtbench.errors import PluginError

    with pytest.raises(PluginError, match="without its image keyword") as caught:

        class OldStyle(MtanReader):  # a third-party reader written before image=False existed
            def read(self, split, index, targets=()):
                return super().read(split, index, targets)

    assert "read(self, split, index, targets=())" in str(caught.value)

    class NewStyle(MtanReader):
        def read(self, split, index, targets=(), *, image=True):
            return super().read(split, index, targets, image=image)

    class Forwarding(MtanReader):
        def read(self, *args, **kwargs):
            return super().read(*args, **kwargs)

    assert NewStyle.read and Forwarding.read
