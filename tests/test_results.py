"""Results store and Δm references: stl produced once and reused; re-runs replace, never double-count."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from mtbench.errors import ResultFileError
from mtbench.result import RunResult
from mtbench.results import find_reference, load_results, store
from mtbench.scoring import ALL_METRICS, PER_TASK

# No torch at this module's import (the runner is imported in the tests that run): the concurrent-writers test
# starts 4 spawned processes that import this module for `_writer`, and torch's import was most of their time.


def test_first_run_produces_the_stl_reference_then_reuses_it(nyu_mtan, tmp_path):
    from mtbench.runner import RunRequest, execute

    results = tmp_path / "results"
    notices: list[str] = []
    request = RunRequest(
        method="ew", data_root=nyu_mtan, budget="smoke", unseen=("depth",), results=results, out=tmp_path / "ew"
    )
    first = execute(request, notice=notices.append).result
    assert any("training it first" in n for n in notices)
    stored = {r.method.name for _, r in load_results(results)}
    assert stored == {"stl", "ew"}
    delta = first.delta_m
    assert delta.reference_method == "stl" and delta.positive_is_better is True
    assert (delta.seen and delta.unseen and delta.joint) or delta.unavailable
    notices.clear()
    execute(
        RunRequest(
            method="fixed-lambda",
            data_root=nyu_mtan,
            budget="smoke",
            unseen=("depth",),
            results=results,
            out=tmp_path / "fl",
        ),
        notice=notices.append,
    )
    assert not any("training it first" in n for n in notices)  # the stored reference is reused
    assert len([1 for _, r in load_results(results) if r.method.name == "stl"]) == 1


def test_delta_m_against_the_reference_is_recomputable(nyu_mtan, tmp_path):
    from mtbench.runner import RunRequest, execute
    from mtbench.scoring import run_delta_m

    results = tmp_path / "results"
    result = execute(
        RunRequest(
            method="uw", data_root=nyu_mtan, budget="smoke", unseen=("depth",), results=results, out=tmp_path / "uw"
        )
    ).result
    reference = find_reference(results, result.signature(), result.seed)
    assert reference is not None and reference.run_id == result.delta_m.reference_run
    if not result.delta_m.unavailable:
        again = run_delta_m(result, reference)
        for role in ("seen", "unseen", "joint"):
            assert getattr(again, role)[ALL_METRICS] == getattr(result.delta_m, role)[ALL_METRICS]
            assert getattr(again, role)[PER_TASK] == getattr(result.delta_m, role)[PER_TASK]


def _fake(method: str, seed: int, value: float) -> RunResult:
    return RunResult.from_json(_fake_json(method, seed, value))


def _fake_json(method: str, seed: int, value: float) -> dict:
    return {
        "schema_version": 1,
        "run_id": f"{method}-{seed}-{value}",
        "created": "2026-01-01T00:00:00+00:00",
        "method": {"name": method, "config": {}},
        "seed": seed,
        "dataset": {"name": "nyuv2-synth", "synthetic": True, "identity": {"fingerprint": "f"}},
        "protocol": {"budget": "quick", "seen": ["semseg"], "unseen": []},
        "tasks": {"semseg": {"seen": True, "metrics": {"mIoU": {"value": value, "higher_is_better": True}}}},
    }


def test_rerun_replaces_and_different_configs_coexist(tmp_path):
    path, replaced = store(_fake("ew", 0, 0.5), tmp_path)
    assert not replaced
    again, replaced = store(_fake("ew", 0, 0.6), tmp_path)
    assert replaced and again == path
    assert json.loads(path.read_text())["tasks"]["semseg"]["metrics"]["mIoU"]["value"] == 0.6
    store(_fake("ew", 1, 0.7), tmp_path)
    assert len(list(load_results(tmp_path))) == 2
    assert _fake("ew", 0, 0.1).config_key == _fake("ew", 0, 0.9).config_key  # metrics are not configuration


def _writer(args: tuple) -> None:
    directory, method, seeds = args
    for seed in seeds:
        for value in range(20):
            store(_fake(method, seed, float(value)), directory)


def test_concurrent_writers_never_lose_or_corrupt_results(tmp_path):
    jobs = [(tmp_path, m, range(5)) for m in ("ew", "uw", "dwa", "mgda")]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, jobs)
    loaded = [r for _, r in load_results(tmp_path)]
    assert len(loaded) == 4 * 5
    assert all(r.tasks["semseg"].metrics["mIoU"].value == 19.0 for r in loaded)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_the_schema_version_written_is_one_that_is_read():
    from mtbench.result import READABLE_VERSIONS, SCHEMA_VERSION

    assert SCHEMA_VERSION in READABLE_VERSIONS and _fake("ew", 0, 0.5).to_json()["schema_version"] == SCHEMA_VERSION


def test_strict_loading_names_a_broken_file_and_find_reference_skips_it(tmp_path):
    good, _ = store(_fake("stl", 0, 0.5), tmp_path)
    broken, _ = store(_fake("stl", 1, 0.5), tmp_path)
    broken.write_text(broken.read_text()[:100])  # truncated
    with pytest.raises(ResultFileError, match="not valid JSON") as caught:
        list(load_results(tmp_path))
    assert caught.value.path == broken
    assert [path for path, _ in load_results(tmp_path, strict=False)] == [good]
    signature = _fake("ew", 0, 0.1).signature()
    assert find_reference(tmp_path, signature, 0).seed == 0
    assert find_reference(tmp_path, signature, 1) is None  # broken counts as absent: the run retrains it
    with pytest.raises(ResultFileError, match="results folder not found"):
        list(load_results(tmp_path / "missing"))


def test_a_result_with_a_non_finite_number_never_enters_the_store(tmp_path):
    from test_leaderboard import _payload

    from mtbench.errors import ResultFileError
    from mtbench.result import RunResult
    from mtbench.results import store

    good = RunResult.from_json(_payload("ew", 0, 0.40, 1.0))
    path, _ = store(good, tmp_path)
    before = path.read_bytes()
    for where, value in (("depth", float("nan")), ("semseg", float("inf"))):
        # a run builds its result in memory (reading one refuses NaN already): spoil a metric of such a result
        result = RunResult.from_json(_payload("ew", 0, 0.40, 1.0))
        metric = "absErr" if where == "depth" else "mIoU"
        object.__setattr__(result.tasks[where].metrics[metric], "value", value)
        with pytest.raises(ResultFileError, match="non-finite") as caught:
            store(result, tmp_path)
        assert f"tasks/{where}/metrics/{metric}/value = {value}" in caught.value.found
    assert path.read_bytes() == before  # the stored run of that configuration and seed is untouched
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == [path.name]
