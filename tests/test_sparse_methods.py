"""Sparse methods end to end: the group axis travels everywhere, pruning keeps its mask, the run answers."""

from __future__ import annotations

import pytest
import torch

from mtbench import catalog
from mtbench.inference import export_run, load_run
from mtbench.presets import budget
from mtbench.protocol import finetune
from mtbench.result import RunResult
from mtbench.runner import RunRequest, execute
from mtbench.sparsity import group_norms, shared_conv_weights, sparsity_stats
from mtbench.training import TensorSet, TrainContext


def _run(root, method: str, out, overrides: dict[str, str], **kwargs) -> RunResult:
    return execute(
        RunRequest(method=method, data_root=root, budget="smoke", unseen=("depth",), overrides=overrides, out=out, **kwargs)
    ).result


def test_output_axis_travels_to_statistics_masks_and_export(nyu_mtan, tmp_path):
    out = tmp_path / "axis-out"
    result = _run(nyu_mtan, "fixed-lambda", out, {"axis": "out", "lam": "5"}, reference=False)
    network = load_run(out).networks[0].model
    by_out = sparsity_stats(network, "out")
    assert result.sparsity.axis == "out"
    assert result.sparsity.group_sparsity == pytest.approx(by_out.group_sparsity) and by_out.group_sparsity > 0
    assert by_out.group_sparsity != pytest.approx(sparsity_stats(network, "in").group_sparsity)
    report = export_run(out, tmp_path / "model.safetensors")
    assert report["max_abs_difference"] <= 1e-4 and report["compact_params"] < report["dense_params"]


def test_finetuning_keeps_zero_output_filters_zero():
    task = catalog.task("nyuv2", "depth")
    generator = torch.Generator().manual_seed(0)
    data = TensorSet({"image": torch.rand(8, 3, 12, 16, generator=generator), "depth": torch.rand(8, 1, 12, 16, generator=generator)})
    ctx = TrainContext(budget("smoke"), [task], data, seed=0, device=torch.device("cpu"))
    model = ctx.new_model()
    weights = [w for _, w in shared_conv_weights(model)]
    with torch.no_grad():
        weights[1][:2] = 0  # two output filters of the second conv
    finetune(model, task, data, ctx, seed=0, axis="out")
    assert torch.equal(group_norms(weights[1], "out")[:2], torch.zeros(2))
    assert (group_norms(weights[1], "out")[2:] > 0).all()


def test_pruning_control_reaches_its_sparsity_and_keeps_the_mask(nyu_mtan, tmp_path):
    result = _run(nyu_mtan, "prune", tmp_path / "prune", {"sparsity": "0.5"}, reference=False)
    assert result.sparsity.group_sparsity == pytest.approx(0.5, abs=0.02)
    assert result.method.config["sparsity"] == 0.5
    state = torch.load(tmp_path / "prune" / "checkpoint.pt", weights_only=True)["model"]
    layers = [key for key in state if key.startswith("backbone.") and key.endswith(".weight") and state[key].dim() == 4]
    zero = sum(int((state[k].pow(2).sum(dim=(0, 2, 3)) == 0).sum()) for k in layers)
    assert zero == sum(layer.zero_groups for layer in result.sparsity.layers)


def test_run_prints_lambda_gradient_compact_ratio_and_the_front(cli, nyu_mtan, tmp_path):
    results = tmp_path / "results"
    for lam in ("0.001", "400"):  # a front from dense to all-zero (smoke-sized, so its numbers mean nothing)
        code, text = cli(
            "run", "fixed-lambda", "--data-root", nyu_mtan, "--unseen", "depth", "--budget", "smoke",
            "--set", f"lam={lam}", "--results", results, "--out", tmp_path / f"fl{lam}",
        )  # fmt: skip
        assert code == 0, text
    code, text = cli(
        "run", "meta-sparsity", "--data-root", nyu_mtan, "--unseen", "depth", "--budget", "smoke",
        "--set", "lam_init=200", "--results", results, "--out", tmp_path / "ms",
    )  # fmt: skip
    assert code == 0, text
    assert "λ's meta-gradient ∂L_Q/∂λ: positive" in text
    assert "compact network (zeroed channels removed)" in text and "× the FLOPs" in text
    assert "fixed-λ front at" in text, text
    stored = RunResult.read(tmp_path / "ms" / "result.json")
    assert stored.inference.params.compact <= stored.inference.params.dense
    assert all(entry.lambda_grad is not None for entry in stored.history)
    picture = tmp_path / "ms" / "lambda.png"  # λ beside its meta-gradient, for a learned λ only
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "fl400" / "lambda.png").exists()
