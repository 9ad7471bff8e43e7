"""`mtbench export` and `mtbench bench inference` on real (smoke) runs."""

from __future__ import annotations

import json

import pytest
import torch

from mtbench.inference import INFERENCE_FILE
from mtbench.result import Accounting, RunResult
from mtbench.runner import RunRequest, execute


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, nyu_mtan):
    """A smoke fixed-lambda run with a λ large enough to zero many groups in three steps."""
    out = tmp_path_factory.mktemp("runs") / "fl"
    execute(
        RunRequest(
            method="fixed-lambda",
            data_root=nyu_mtan,
            budget="smoke",
            unseen=("depth",),
            overrides={"lam": "60"},
            out=out,
            reference=False,
        )
    )
    return out


def test_run_writes_a_sparsity_picture(sparse_run):
    picture = sparse_run / "sparsity.png"
    assert picture.is_file() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = RunResult.read(sparse_run / "result.json")
    assert result.sparsity.group_sparsity > 0.2 and result.input_size == (24, 32)


def test_export_reloads_with_identical_outputs(cli, sparse_run, tmp_path):
    target = tmp_path / "new" / "folder" / "model.safetensors"  # missing folders are created
    code, text = cli("export", sparse_run, "--out", target)
    assert code == 0, text
    assert target.is_file() and target.with_suffix(".json").is_file()
    from mtbench.inference import export_run

    report = export_run(sparse_run, tmp_path / "again.safetensors")
    assert report["max_abs_difference"] <= 1e-4
    assert report["compact_params"] < report["dense_params"]


def test_bench_inference_writes_its_report_beside_the_result_which_stays_as_written(cli, sparse_run, monkeypatch):
    from mtbench.export import paths

    monkeypatch.setattr(paths, "COMPILE_BACKEND", "eager")  # dynamo without inductor's C++ build: seconds
    result_file = sparse_run / "result.json"
    written = result_file.read_bytes()
    code, text = cli("bench", "inference", sparse_run, "--repeats", "2", "--warmup", "1")
    assert code == 0, text
    assert "parameters" in text and "FLOPs" in text and "latency, batch 16" in text and "compact ÷ dense" in text
    assert "FLOP ratio compact ÷ dense" in text and "÷ FLOP ratio" in text
    for name in paths.path_names():  # each path has a row: timed, or unavailable with its reason
        assert f"folded, {name}" in text
    assert result_file.read_bytes() == written  # result.json is written once, by the run
    report = json.loads((sparse_run / INFERENCE_FILE).read_text())
    assert report["params"] == RunResult.read(result_file).inference.params.to_json()
    assert report["params"]["compact"] < report["params"]["dense"]
    assert report["flops"]["compact"] < report["flops"]["dense"]
    assert set(report["latency_ms"]) == {"1", "16"}
    assert Accounting.from_json(report).to_json() == report  # the file is the typed report's JSON form
    for batch in ("1", "16"):
        assert set(report["latency_ms"][batch]["paths"]) == set(paths.path_names())


def test_bench_inference_fails_on_a_path_with_wrong_outputs(cli, sparse_run, monkeypatch):
    from mtbench.export.paths import PATHS, FixedTasks, InferencePath

    def doubled(model, images, tasks):
        fixed = FixedTasks(model, tasks)
        return lambda x: tuple(2 * out for out in fixed(x))

    monkeypatch.setattr(PATHS, "_items", dict(PATHS._items))
    monkeypatch.setattr(PATHS, "_sources", dict(PATHS._sources))
    PATHS.register("doubled", InferencePath("doubled", "a wrong path (test)", doubled))
    code, text = cli("bench", "inference", sparse_run, "--paths", "eager,doubled", "--repeats", "1", "--warmup", "0")
    assert code == 1, text
    assert "wrong outputs" in text and "gives outputs other than the dense network's" in text
    code, text = cli("bench", "inference", sparse_run, "--paths", "eager,jit", "--no-latency")
    assert code == 1 and "unknown inference path 'jit'" in text


def test_missing_run_folder_is_a_clear_error(cli, tmp_path):
    code, text = cli("bench", "inference", tmp_path)
    assert code == 1 and "result.json" in text


def test_single_task_runs_are_accounted_as_all_their_networks(nyu_mtan, tmp_path, monkeypatch):
    """stl serves its seen tasks with one network each: parameters, FLOPs and exports cover all of them."""
    from mtbench.export import count_flops, count_params, paths
    from mtbench.inference import bench_inference, export_run, load_run

    monkeypatch.setattr(paths, "COMPILE_BACKEND", "eager")  # dynamo without inductor's C++ build: seconds

    out = tmp_path / "stl"
    execute(RunRequest(method="stl", data_root=nyu_mtan, budget="smoke", unseen=("depth",), out=out, reference=False))
    run = load_run(out)
    seen = list(RunResult.read(out / "result.json").protocol.seen)
    assert [n.tasks for n in run.networks] == [[task] for task in seen] and len(seen) > 1
    report = bench_inference(out, batch_sizes=(1,), repeats=1, warmup=0)
    for name, path in report.latency_ms["1"].paths.items():  # every path runs (and is checked on) each network
        assert path.status == "ok" or (name == "onnxruntime" and path.status == "unavailable"), path
    single = [count_params(n.model) for n in run.networks]
    assert report.networks == len(seen) and report.params.dense == sum(single)
    image = torch.rand(1, 3, *run.input_size)
    assert report.flops.dense == sum(count_flops(n.model, image, n.tasks) for n in run.networks)
    exported = export_run(out, tmp_path / "stl.safetensors")
    assert [w for w, _ in exported["files"]] == [str(tmp_path / f"stl-{task}.safetensors") for task in seen]
    assert all((tmp_path / f"stl-{task}.safetensors").is_file() for task in seen)
    assert exported["max_abs_difference"] <= 1e-4 and exported["dense_params"] == sum(single)
