"""Inference paths of the compact network (`mtbench.export.paths`): each gives the dense network's outputs, a path
that cannot run is reported with its reason, and the report's records read old and new files. No timed assertions."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from rich.console import Console
from torch import nn

from mtbench import catalog
from mtbench.errors import ConfigError
from mtbench.export import compact
from mtbench.export import paths as inference_paths
from mtbench.export.paths import PATHS, InferencePath, Prepared, Rejected, path_names, prepare, reference_outputs
from mtbench.inference import Network, measure_latency, resolve_paths
from mtbench.models import MultiTaskNet
from mtbench.presets import budget
from mtbench.result import Accounting, Latency, PathLatency
from mtbench.sparsity import shared_conv_weights

pytestmark = pytest.mark.usefixtures("one_thread")

#: depth and edge have outputs of the same shape: a path that swaps them is caught by value, not by shape
TASKS = ["depth", "edge", "smiling"]
SHAPE = (2, 3, 32, 40)


@pytest.fixture(scope="module")
def sparse_net() -> MultiTaskNet:
    """A smoke-preset network with half of each shared conv's input groups zeroed and BatchNorm far from the
    identity (statistics and affine parameters random), so that an unfolded or dropped BatchNorm shows."""
    torch.manual_seed(0)
    specs = [catalog.task("nyuv2", "depth"), catalog.task("nyuv2", "edge"), catalog.task("celebamask", "smiling")]
    model = MultiTaskNet(budget("smoke").arch, specs)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, weight in shared_conv_weights(model):
            weight[:, torch.rand(weight.shape[1], generator=gen) < 0.5] = 0
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.normal_(0.0, 0.3, generator=gen)
            bn.running_var.uniform_(0.3, 2.0, generator=gen)
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(0.0, 0.3, generator=gen)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(*SHAPE, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def fast_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compile path through dynamo without inductor's C++ build (seconds, not minutes); the inductor build
    itself is the slow test below."""
    monkeypatch.setattr(inference_paths, "COMPILE_BACKEND", "eager")


def _check(name: str, model: MultiTaskNet, images: torch.Tensor) -> Prepared:
    folded = compact(model, fold_bn=True)
    reference = reference_outputs(model, images, TASKS)
    result = prepare(name, [folded], [TASKS], images, [reference])
    if isinstance(result, Rejected) and result.status == "unavailable" and name == "onnxruntime":
        pytest.skip(f"onnxruntime path unavailable here: {result.reason}")
    assert isinstance(result, Prepared), result
    (outputs,) = result.call(images)
    assert len(outputs) == len(TASKS)
    with torch.no_grad():
        dense = model(images, TASKS)
    for task, output in zip(TASKS, outputs):  # checked here again, independently of `compare`
        torch.testing.assert_close(torch.as_tensor(output), dense[task], rtol=1e-4, atol=1e-4)
    assert result.max_abs_difference <= 1e-4
    return result


def test_the_built_in_paths_are_registered():
    assert path_names()[:5] == ["eager", "channels_last", "jit_freeze", "compile", "onnxruntime"]
    assert resolve_paths(None) == path_names() and resolve_paths(["jit_freeze", "eager"]) == ["jit_freeze", "eager"]
    with pytest.raises(ConfigError, match="unknown inference path 'jit'"):
        resolve_paths(["jit"])


@pytest.mark.parametrize("name", ["eager", "channels_last", "jit_freeze", "compile", "onnxruntime"])
def test_every_path_gives_the_dense_networks_outputs(name, sparse_net, images, fast_compile):
    _check(name, sparse_net, images)


@pytest.mark.slow
def test_compile_with_inductor_gives_the_dense_networks_outputs(sparse_net, images):
    _check("compile", sparse_net, images)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, build) -> None:
    """Register a path for this test only (the registry's tables are copies, restored afterwards)."""
    monkeypatch.setattr(PATHS, "_items", dict(PATHS._items))
    monkeypatch.setattr(PATHS, "_sources", dict(PATHS._sources))
    PATHS.register(name, InferencePath(name, "a path of a test", build))


def test_wrong_task_order_and_unfolded_batchnorm_are_mismatches_not_timings(sparse_net, images, monkeypatch):
    def swapped_tasks(model, images, tasks):  # depth and edge swapped: same shape, other values
        fixed = inference_paths.FixedTasks(model, tasks)

        def call(x):
            depth, edge, *rest = fixed(x)
            return (edge, depth, *rest)

        return call

    def batchnorm_dropped(model, images, tasks):  # the compact network with BN kept, then its BN left out
        plain = copy.deepcopy(unfolded)
        for module in list(plain.modules()):
            for child_name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, child_name, nn.Identity())
        return inference_paths.FixedTasks(plain, tasks)

    unfolded = compact(sparse_net, fold_bn=False)
    _register(monkeypatch, "swapped-tasks", swapped_tasks)
    _register(monkeypatch, "bn-dropped", batchnorm_dropped)
    folded = compact(sparse_net, fold_bn=True)
    reference = reference_outputs(sparse_net, images, TASKS)
    for name in ("swapped-tasks", "bn-dropped"):
        result = prepare(name, [folded], [TASKS], images, [reference])
        assert isinstance(result, Rejected) and result.status == "mismatch", result
        assert "outputs differ by" in result.reason
    timed = measure_latency(
        [Network(TASKS, sparse_net)], (32, 40), batch_sizes=(2,), repeats=1, warmup=0,
        paths=["eager", "swapped-tasks", "bn-dropped"],
    )
    paths = timed["2"].paths
    assert paths["eager"].status == "ok" and paths["eager"].median_ms > 0
    for name in ("swapped-tasks", "bn-dropped"):
        assert paths[name].status == "mismatch" and paths[name].median_ms is None and paths[name].reason


def test_a_path_that_cannot_run_is_reported_with_its_reason_not_dropped(sparse_net, monkeypatch, fast_compile):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError

    def failing(model, images, tasks):
        raise RuntimeError("no C++ compiler found\nsecond line of the message")

    _register(monkeypatch, "broken", failing)
    timed = measure_latency(
        [Network(TASKS, sparse_net)], (32, 40), batch_sizes=(1, 2), repeats=2, warmup=1,
        paths=["onnxruntime", "broken", "channels_last"],
    )
    for batch in ("1", "2"):
        latency = timed[batch]
        assert list(latency.paths) == ["onnxruntime", "broken", "channels_last"]
        missing, broken, ok = latency.paths.values()
        assert missing.status == "unavailable" and "not installed" in missing.reason and missing.median_ms is None
        assert broken.status == "unavailable" and broken.reason == "RuntimeError: no C++ compiler found"
        assert ok.status == "ok" and ok.low_ms <= ok.median_ms <= ok.high_ms and ok.max_abs_difference <= 1e-4
        assert latency.rounds == 2 and latency.dense_spread[0] <= latency.dense <= latency.dense_spread[1]
        assert latency.ratio("channels_last") == ok.median_ms / latency.dense and latency.ratio("broken") is None
        assert Latency.from_json(latency.to_json()) == latency


OLD_REPORT = {  # an inference.json written before inference paths were measured
    "params": {"dense": 1000, "compact": 400},
    "flops": {"dense": 2_000_000, "compact": 900_000},
    "input_size": [24, 32],
    "tasks": ["semseg", "normal"],
    "networks": 1,
    "threads": 2,
    "device": "cpu",
    "latency_ms": {"1": {"dense": 2.5, "compact": 1.5, "compact_bn_folded": 1.25}},
}


def _text(renderable) -> str:
    console = Console(width=220, record=True)
    console.print(renderable)
    return console.export_text()


def test_an_old_inference_json_still_loads_and_renders(tmp_path):
    from mtbench.cli.render import inference_table

    report = Accounting.from_json(OLD_REPORT)
    latency = report.latency_ms["1"]
    assert latency.compact_bn_folded == 1.25 and latency.paths is None and latency.rounds is None
    assert latency.dense_spread is None and latency.ratio("eager") is None
    assert report.to_json() == OLD_REPORT  # written back as read: no new keys
    text = _text(inference_table(tmp_path / "old-run", report))
    assert "compact, BN folded" in text and "1.25" in text and "0.500" in text  # 1.25 / 2.5


def test_the_table_shows_each_path_with_spread_ratio_and_flop_ratio(tmp_path):
    from mtbench.cli.render import inference_table

    paths = {
        "eager": PathLatency("eager", "ok", 1.0, 0.9, 1.2, 3e-7),
        "onnxruntime": PathLatency("onnxruntime", "unavailable", reason="onnxruntime not installed [x]"),
        "compile": PathLatency("compile", "mismatch", max_abs_difference=0.5, reason="depth: outputs differ by 0.5"),
    }
    new = {**OLD_REPORT, "latency_ms": {"16": {
        "dense": 2.0, "compact": 1.5, "compact_bn_folded": 1.0, "rounds": 20,
        "dense_spread": [1.9, 2.2], "compact_spread": [1.4, 1.6],
        "paths": {name: path.to_json() for name, path in paths.items()},
    }}}
    report = Accounting.from_json(new)
    assert report.to_json() == new and report.latency_ms["16"].paths == paths
    text = _text(inference_table(tmp_path / "run", report))
    assert "FLOP ratio compact ÷ dense = 0.450" in text and "20 interleaved rounds" in text
    eager = next(line for line in text.splitlines() if "folded, eager" in line)
    assert "1.00" in eager and "0.90–1.20" in eager and "0.500" in eager and "1.11×" in eager  # 0.5 / 0.45
    assert "unavailable: onnxruntime not installed [x]" in text
    assert "wrong outputs: depth: outputs differ by 0.5" in text
    assert "1.90–2.20" in text and "latency, batch 16" in text
