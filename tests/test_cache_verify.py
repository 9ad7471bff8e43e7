"""A cache's files are checksummed when written and checked when opened: damage is refused by name, `mtbench data
verify` reports every damaged file, and `mtbench data prepare --rebuild` repairs the cache (atomically)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from mtbench.data.cache import CACHE_META, ArrowCacheReader, check_cache, prepare, read_index
from mtbench.data.checksums import CHUNK_BYTES, META_CHECK, CacheIntegrityError, file_crcs
from mtbench.data.nyuv2 import MtanReader

ARROW = "train/data-00000-of-00001.arrow"


def _flip(path: Path, at: int, count: int = 200) -> None:
    """Invert ``count`` bytes of ``path`` from offset ``at`` (the file keeps its size)."""
    data = bytearray(path.read_bytes())
    at = min(at, len(data) - count)
    data[at:at + count] = bytes(b ^ 0xFF for b in data[at:at + count])
    path.write_bytes(bytes(data))


def _rebuild_command(cache_root: Path) -> str:
    return f"mtbench data prepare nyuv2-synth --rebuild --cache {cache_root.resolve()}"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(nyu_mtan, copy_of, tmp_path):
    """A cache prepared under the test's own cache root from a writable copy of the NYU fixture."""
    source = copy_of(nyu_mtan)
    return prepare(MtanReader(source), cache_root=tmp_path / "cache").path


def test_the_metadata_records_every_file_and_a_check_of_itself(cache):
    meta = json.loads((cache / CACHE_META).read_text())
    record = meta["checksums"]
    on_disk = {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()} - {CACHE_META}
    assert set(record["files"]) == on_disk and record["algorithm"] == "crc32" and record["chunk_bytes"] == CHUNK_BYTES
    size, sums = file_crcs(cache / ARROW)
    assert record["files"][ARROW] == {"size": size, "crc32": sums}
    reader = ArrowCacheReader(cache)
    assert reader.verified_bytes == sum(entry["size"] for entry in record["files"].values())


@pytest.mark.parametrize("name", [ARROW, "val/data-00000-of-00001.arrow", "train/state.json", "val/dataset_info.json"])
def test_flipped_bytes_in_a_cached_file_are_refused_naming_the_file(cache, name):
    _flip(cache / name, at=(cache / name).stat().st_size // 2)
    with pytest.raises(CacheIntegrityError) as caught:
        ArrowCacheReader(cache)
    error = caught.value
    assert error.path == cache / name
    assert "damaged cache file: 1 of 1 chunk(s) of 4 MiB changed since the cache was written" in str(error)
    assert error.found != error.expected and error.found.startswith("CRC-32 ")
    assert _rebuild_command(cache.parents[2]) in error.fix
    assert check_cache(cache).problems[0].path == cache / name


def test_damage_is_located_to_its_chunk(tmp_path):
    """A file of several chunks: the error names the first changed chunk's byte range and counts the changed ones."""
    from mtbench.data.checksums import compare, crc_chunks

    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 * CHUNK_BYTES + 10, dtype=np.uint8).tobytes())
    record = {"size": len(data), "crc32": crc_chunks(data)}
    data[CHUNK_BYTES + 5] ^= 1
    data[3 * CHUNK_BYTES + 1] ^= 1
    problem = compare(tmp_path / "f", record, len(data), crc_chunks(data), CHUNK_BYTES)
    assert problem is not None
    assert problem.problem.endswith(f"2 of 4 chunk(s) of 4 MiB changed since the cache was written, the first at "
                                    f"bytes {CHUNK_BYTES}..{2 * CHUNK_BYTES - 1}")
    assert compare(tmp_path / "f", record, len(data), crc_chunks(bytes(data)), CHUNK_BYTES) is not None
    chunks = crc_chunks(data)
    assert compare(tmp_path / "f", {**record, "crc32": chunks}, len(data), chunks, CHUNK_BYTES) is None


def test_the_metadata_is_checked_too(cache):
    """The fingerprint a run records comes from the metadata: an edit of it is refused, and so is unreadable JSON."""
    meta_path = cache / CACHE_META
    original = meta_path.read_text()
    meta = json.loads(original)
    meta["identity"]["fingerprint"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheIntegrityError, match="damaged cache metadata: its content differs") as caught:
        ArrowCacheReader(cache)
    assert caught.value.path == meta_path and _rebuild_command(cache.parents[2]) in caught.value.fix
    meta_path.write_text(original[: len(original) // 2])
    with pytest.raises(CacheIntegrityError, match="damaged cache metadata: cannot be read") as caught:
        ArrowCacheReader(cache)
    assert caught.value.path == meta_path
    assert _rebuild_command(cache.parents[2]) in caught.value.fix  # the data set found from where the cache lies


def test_a_missing_and_a_stray_file_are_refused(cache):
    (cache / "val" / "dataset_info.json").unlink()
    with pytest.raises(CacheIntegrityError, match="missing cache file") as caught:
        ArrowCacheReader(cache)
    assert caught.value.path == cache / "val" / "dataset_info.json"
    (cache / "val" / "dataset_info.json").write_text("{}")  # back, but not what was written
    (cache / "train" / "extra.arrow").write_bytes(b"x")
    problems = check_cache(cache).problems
    assert [(p.path.name, p.problem.split(":")[0]) for p in problems] == [
        ("dataset_info.json", "damaged cache file"),
        ("extra.arrow", "stray file in the cache"),
    ]


def test_a_spawned_worker_checks_the_files_it_maps_again(cache):
    split = ArrowCacheReader(cache)._split("train")
    blob = pickle.dumps(split)
    verified = (cache / ARROW).stat().st_size + (cache / "train/state.json").stat().st_size
    assert pickle.loads(blob).verified_bytes == verified
    _flip(cache / ARROW, at=100, count=1)
    with pytest.raises(CacheIntegrityError, match="changed since the cache was written"):
        pickle.loads(blob)


def test_verify_reports_each_damaged_file_and_rebuild_repairs_them_then_a_run_works(cli, cache, tmp_path):
    from mtbench.runner import RunRequest, execute

    cache_root = cache.parents[2]
    before = _snapshot(cache)
    _flip(cache / ARROW, at=1000)
    _flip(cache / "val" / "state.json", at=20, count=3)
    code, text = cli("data", "verify", "nyuv2-synth", "--cache", cache_root)
    assert code == 1, text
    assert f"{cache / ARROW}: damaged cache file" in text and f"{cache / 'val' / 'state.json'}: damaged" in text
    assert "2 problem(s)" in text and _rebuild_command(cache_root) in text
    code, text = cli("data", "verify", "nyuv2", "--root", cache)  # a cache folder named directly: checked first
    assert code == 1 and f"{cache / ARROW}: damaged cache file" in text, text
    request = RunRequest(method="ew", data_root=cache, budget="smoke", out=tmp_path / "run", reference=False)
    with pytest.raises(CacheIntegrityError, match="damaged cache file"):
        execute(request)
    assert not (tmp_path / "run" / "result.json").exists()

    code, text = cli("data", "prepare", "nyuv2-synth", "--rebuild", "--cache", cache_root)
    assert code == 0, text
    assert f"rebuilding {cache}" in text and "every checksum matches" in text
    after = _snapshot(cache)
    assert after.keys() == before.keys()
    after.pop(CACHE_META), before.pop(CACHE_META)  # may differ (its time stamp) or not (within the same second)
    assert after == before  # the damaged data files, byte for byte as first written again
    code, text = cli("data", "verify", "nyuv2-synth", "--cache", cache_root)
    assert code == 0 and "every checksum matches" in text, text
    code, text = cli("data", "prepare", "nyuv2-synth", "--rebuild", "--cache", cache_root)
    assert code == 0 and "kept" in text and "rebuilding" not in text, text
    result = execute(request).result
    assert result.dataset.fingerprint == read_index(cache_root)["nyuv2-synth"]["fingerprint"]


def test_a_rebuild_from_a_changed_source_is_refused_and_leaves_the_cache(cli, cache):
    cache_root = cache.parents[2]
    _flip(cache / ARROW, at=1000)
    damaged = _snapshot(cache)
    source = Path(read_index(cache_root)["nyuv2-synth"]["source"])
    depth = np.load(source / "val" / "depth" / "1.npy")
    np.save(source / "val" / "depth" / "1.npy", depth + 1)  # another content: a rebuild would be another data set
    code, text = cli("data", "prepare", "nyuv2-synth", "--rebuild", "--cache", cache_root)
    assert code == 1 and "source has changed since the cache was made" in text, text
    assert _snapshot(cache) == damaged


def test_a_swap_that_fails_puts_the_old_cache_back(cache, monkeypatch):
    from mtbench.data import cache as cache_module

    _flip(cache / ARROW, at=1000)
    damaged = _snapshot(cache)
    (entry,) = cache_module.caches_of("nyuv2-synth", cache.parents[2])
    real_replace = cache_module.os.replace

    def replace(src, dst):
        if Path(dst) == cache and Path(src).name.startswith(f".{cache.name}.") and "replaced" not in Path(src).name:
            raise OSError("no space left on device")  # moving the new cache in fails; the old one was set aside
        return real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", replace)
    with pytest.raises(OSError, match="no space left"):
        cache_module.rebuild(entry, "nyuv2")
    assert _snapshot(cache) == damaged
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no scratch or set-aside folder left


def test_a_rebuild_that_fails_while_preparing_leaves_the_old_cache(cache, monkeypatch):
    from mtbench.data import cache as cache_module
    from mtbench.errors import DataFormatError

    cache_root = cache.parents[2]
    _flip(cache / ARROW, at=1000)
    damaged = _snapshot(cache)
    (entry,) = cache_module.caches_of("nyuv2-synth", cache_root)
    reads = {"n": 0}
    original = MtanReader.read

    def failing_read(self, *args, **kwargs):
        reads["n"] += 1
        if reads["n"] > 5:
            raise DataFormatError(self.root, "disk went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MtanReader, "read", failing_read)
    with pytest.raises(DataFormatError, match="disk went away"):
        cache_module.rebuild(entry, "nyuv2")
    assert _snapshot(cache) == damaged
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]


def _strip_checksums(folder: Path) -> None:
    """Make ``folder`` look like a cache written before checksums were recorded."""
    meta = json.loads((folder / CACHE_META).read_text())
    del meta["checksums"], meta[META_CHECK]
    (folder / CACHE_META).write_text(json.dumps(meta))


def test_a_cache_without_checksums_is_read_but_gives_no_fingerprint(cli, cache):
    _strip_checksums(cache)
    reader = ArrowCacheReader(cache)  # samples are still read (as caches of format 1 are) ...
    assert reader.read("train", 0, ("depth",))["depth"].shape == (1, 24, 32)
    with pytest.raises(CacheIntegrityError, match="written without checksums") as caught:
        reader.identity()  # ... but no run records a fingerprint for bytes nobody verified
    assert _rebuild_command(cache.parents[2]) in caught.value.fix
    code, text = cli("data", "verify", "nyuv2-synth", "--cache", cache.parents[2])
    assert code == 1 and "no checksums" in text, text
    code, text = cli("data", "prepare", "nyuv2-synth", "--rebuild", "--cache", cache.parents[2])
    assert code == 0, text
    assert ArrowCacheReader(cache).identity().fingerprint == read_index(cache.parents[2])["nyuv2-synth"]["fingerprint"]


def test_a_runs_synthetic_cache_without_checksums_is_prepared_again_and_a_damaged_one_refused(tmp_path, monkeypatch):
    import dataclasses

    from mtbench.data.resolve import resolve_data
    from mtbench.presets import budget

    monkeypatch.setenv("MTBENCH_HOME", str(tmp_path / "home"))
    tiny = dataclasses.replace(budget("smoke"), synth_samples=8)
    _, reader = resolve_data("nyuv2-synth", None, tiny)
    path, fingerprint = reader.root, reader.identity().fingerprint
    _strip_checksums(path)
    notices: list[str] = []
    _, again = resolve_data("nyuv2-synth", None, tiny, notices.append)
    assert again.root == path and again.identity().fingerprint == fingerprint and again.checksums is not None
    assert any("written without checksums by an older mtbench" in n for n in notices), notices
    _flip(path / ARROW, at=500)
    with pytest.raises(CacheIntegrityError) as caught:
        resolve_data("nyuv2-synth", None, tiny)
    assert caught.value.path == path / ARROW
    # the default cache root: no --cache in the fix
    assert "run `mtbench data prepare nyuv2-synth --rebuild` (" in caught.value.fix


def test_a_runs_synthetic_cache_with_damaged_metadata_is_refused_not_made_again(cli, tmp_path, monkeypatch):
    import dataclasses

    from mtbench.data.resolve import resolve_data
    from mtbench.presets import budget

    monkeypatch.setenv("MTBENCH_HOME", str(tmp_path / "home"))
    tiny = dataclasses.replace(budget("smoke"), synth_samples=8)
    _, reader = resolve_data("nyuv2-synth", None, tiny)
    meta_path = reader.root / CACHE_META
    for damage in (lambda text: text[: len(text) // 2], lambda text: text.replace('"val"', '"va1"', 1)):
        original = meta_path.read_text()
        meta_path.write_text(damage(original))
        notices: list[str] = []
        with pytest.raises(CacheIntegrityError, match="damaged cache metadata") as caught:
            resolve_data("nyuv2-synth", None, tiny, notices.append)
        assert caught.value.path == meta_path and not any("preparing" in n for n in notices)
        assert "run `mtbench data prepare nyuv2-synth --rebuild` (" in caught.value.fix
        code, text = cli("data", "prepare", "nyuv2-synth", "--rebuild")
        assert code == 0 and f"rebuilding {reader.root}" in text, text
        assert meta_path.read_text() != damage(original)
        _, again = resolve_data("nyuv2-synth", None, tiny)
        assert again.identity().fingerprint == reader.identity().fingerprint
