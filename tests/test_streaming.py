"""The streaming path (issue 10): batches read by DataLoader workers, the same numbers as the data in memory."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from mtbench.data.layouts import open_reader
from mtbench.errors import ConfigError
from mtbench.runner import RunRequest, execute, plan
from mtbench.streaming import StreamingSet, choose_data_path, split_read
from mtbench.training import TensorSet

CPU = torch.device("cpu")


def _requests(count: int, position: int, jump: int = 0) -> list[list[int]] | None:
    """Two batches of 3 per position, drawn from (position + jump) alone."""
    if position >= 12:
        return None
    rng = np.random.default_rng([7, position + jump])
    return [rng.choice(count, size=3, replace=False).tolist() for _ in range(2)]


@pytest.mark.parametrize(
    ("fixture", "family", "resolution"),
    [
        ("face_official", "celebamask", (12, 12)),  # JPEG images, resized: the nearest uint8 code is kept
        ("nyu_mtan", "nyuv2", (16, 20)),  # .npy floats, resized
        ("nyu_nyudmt", "nyuv2", None),  # JPEG images at their size
    ],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_in_memory_batches_bit_for_bit(request, fixture, family, resolution, workers):
    reader = open_reader(family, request.getfixturevalue(fixture))
    keys = list(reader.targets())
    count = reader.num_samples("train")
    read = split_read(reader.read, "train")
    memory = TensorSet.load(read, count, keys, resolution)
    streamed = StreamingSet(read, count, keys, resolution, workers=workers)
    ahead = functools.partial(_requests, count)
    try:
        assert streamed.image_size == memory.image_size
        for position in range(12):
            got = streamed.fetch(ahead(position), keys, CPU, ahead=ahead, position=position, stream="s")
            for indices, batch in zip(ahead(position), got):
                expected = memory.batch(indices, keys, CPU)
                assert batch.keys() == expected.keys()
                for key, value in expected.items():
                    assert batch[key].dtype == value.dtype, key
                    assert torch.equal(batch[key], value), (key, position)
    finally:
        streamed.close()
    if workers:
        assert streamed.stats == {"hits": 24, "misses": 0, "direct": 0}
    else:
        assert streamed.stats == {"hits": 0, "misses": 0, "direct": 24}


def test_a_wrong_guess_or_a_jump_is_read_on_the_spot(nyu_mtan):
    reader = open_reader("nyuv2", nyu_mtan)
    keys = ["semantic13"]
    count = reader.num_samples("train")
    read = split_read(reader.read, "train")
    memory = TensorSet.load(read, count, keys)
    streamed = StreamingSet(read, count, keys, workers=1)
    wrong = functools.partial(_requests, count, jump=100)  # guesses other batches than those asked for
    right = functools.partial(_requests, count)
    try:
        for position in (0, 1, 2):
            (batch, _) = streamed.fetch(right(position), keys, CPU, ahead=wrong, position=position, stream="wrong")
            assert torch.equal(batch["semantic13"], memory.batch(right(position)[0], keys, CPU)["semantic13"])
        assert streamed.stats["misses"] == 6 and streamed.stats["hits"] == 0
        for position in (5, 6, 2, 3):  # the loop jumps forward, then back: the stream restarts there
            (batch, _) = streamed.fetch(right(position), keys, CPU, ahead=right, position=position, stream="right")
            assert torch.equal(batch["image"], memory.batch(right(position)[0], keys, CPU)["image"])
        assert streamed.stats["hits"] == 8
    finally:
        streamed.close()


def _run(root, tmp_path, name, method="ew", **options):
    request = RunRequest(
        method=method, data_root=root, budget="smoke", out=tmp_path / name, unseen=("depth",), reference=False,
        results=tmp_path / f"results-{name}", **options,
    )
    return execute(request).result


@pytest.mark.parametrize("method", ["ew", "meta-sparsity", "stl"])
def test_a_streamed_run_gives_the_in_memory_numbers(nyu_mtan, tmp_path, method):
    memory = _run(nyu_mtan, tmp_path, "memory", method, data_mode="memory")
    streamed = _run(nyu_mtan, tmp_path, "stream", method, data_mode="stream", loader_workers=2)
    assert memory.environment["data"]["mode"] == "memory" and memory.environment["data"]["resident"] == "cpu"
    data = streamed.environment["data"]
    assert data["mode"] == "stream" and data["workers"] == 2
    assert data["prefetch"]["misses"] == 0 and data["prefetch"]["hits"] > 0, data["prefetch"]
    assert {t: o.metrics for t, o in streamed.tasks.items()} == {t: o.metrics for t, o in memory.tasks.items()}
    assert streamed.sparsity == memory.sparsity
    assert streamed.lam == memory.lam
    assert streamed.config_key == memory.config_key  # how the data were held is not part of the protocol


def test_auto_streams_when_the_in_memory_estimate_exceeds_the_budget(nyu_mtan, tmp_path):
    path = choose_data_path("auto", 3 * 2**20, 1000, CPU, budget_gib=3.0)
    assert (path.mode, path.estimate_bytes, path.workers) == ("memory", 3000 * 2**20, 0)
    assert "fits" in path.reason and "2.93 GiB" in path.reason
    path = choose_data_path("auto", 3 * 2**20, 1000, CPU, budget_gib=2.5, workers=3)
    assert (path.mode, path.workers) == ("stream", 3) and "exceeds the memory budget of 2.50 GiB" in path.reason
    assert choose_data_path("memory", 2**40, 10**6, CPU, budget_gib=1.0).mode == "memory"  # forced

    result = _run(nyu_mtan, tmp_path, "tiny-budget", memory_budget_gib=1e-6)
    assert result.environment["data"]["mode"] == "stream"
    assert result.environment["data"]["requested"] == "auto"


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("data_mode", "disk", "unknown data mode"),
        ("memory_budget_gib", 0.0, "must be positive"),
        ("loader_workers", -1, "cannot be negative"),
    ],
)
def test_bad_data_options_are_refused_by_the_plan(nyu_mtan, tmp_path, option, value, problem):
    request = RunRequest(method="ew", data_root=nyu_mtan, budget="smoke", out=tmp_path / "run", unseen=("depth",))
    with pytest.raises(ConfigError, match=problem):
        plan(dataclasses.replace(request, **{option: value}))
    assert not (tmp_path / "run").exists()


def test_bench_memory_measures_the_streaming_path(cli):
    code, output = cli(
        *("bench", "memory", "--n", "2", "--case", "nyuv2-nyudmt", "--nyu-size", "12x16", "--resolution", "8"),
        *("--no-compare", "--steps", "4", "--workers", "1", "--repeats", "2"),
    )
    assert code == 0, output
    assert "stream" in output and "private memory" in output and "MiB (" in output  # median (lowest–highest)
    rows = output[output.index("┏", output.index("Extrapolated")):]  # the extrapolation table below its title
    assert "compact" in rows and "stream" not in rows  # a stream holds batches, not samples: not extrapolated


def test_a_set_moved_to_a_device_gives_the_same_batches(nyu_mtan):
    reader = open_reader("nyuv2", nyu_mtan)
    read = split_read(reader.read, "train")
    data = TensorSet.load(read, reader.num_samples("train"), ["semantic13", "depth"], (8, 10))
    moved = data.to(CPU)  # on a CUDA machine the runner moves the training set with `to(cuda)`
    for key, value in data.batch([3, 1, 4], ["semantic13", "depth"], CPU).items():
        assert torch.equal(moved.batch([3, 1, 4], ["semantic13", "depth"], CPU)[key], value)
    assert moved.decode == data.decode
