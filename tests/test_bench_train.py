"""`mtbench bench train`: the training-step benchmark runs at the smoke budget and prints every column."""

from __future__ import annotations

import json

import pytest

from mtbench.bench_train import Variant, bench_train, bf16_peak_tflops


def test_variants_parse_set_options_and_compile():
    assert Variant.parse("ew") == Variant("ew")
    second = Variant.parse("meta-sparsity:first_order=false")
    assert second.overrides == {"first_order": "false"} and not second.compile
    assert second.label == "meta-sparsity (first_order=false)"
    assert Variant.parse("ew:compile=true").compile


def test_peak_table_knows_common_gpus_and_leaves_others_blank():
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("Some Future GPU") is None and bf16_peak_tflops(None) is None


def test_bench_train_measures_every_variant():
    report = bench_train(
        [Variant("ew"), Variant("meta-sparsity", {"first_order": "false"})],
        budget="smoke", device="cpu", warmup=0, steps=1, repeats=2,
    )
    ew, meta = report.measures
    assert len(ew.seconds_per_step) == 2 and ew.median > 0
    assert ew.images_per_step == 4 and meta.images_per_step == 8  # the batch; support + query
    assert meta.flops_per_step > ew.flops_per_step > 0  # second order costs more than one forward/backward
    assert ew.host_peak_rss > 0 and ew.device_peak is None
    assert report.deterministic is True and report.peak_tflops is None


@pytest.mark.slow
def test_bench_train_command_prints_the_columns(cli, tmp_path):
    out = tmp_path / "bench.json"
    code, output = cli(
        "bench", "train", "ew", "fixed-lambda", "--budget", "smoke", "--device", "cpu",
        "--warmup", "1", "--steps", "1", "--repeats", "1", "--json", out,
    )
    assert code == 0, output
    for column in ("ms/step", "median", "spread", "images/s", "/step", "GFLOP/s", "% bf16", "RSS MiB", "peak MiB",
                   "× ew", "warm-up", "fixed-lambda"):
        assert column in output, column
    payload = json.loads(out.read_text())
    assert [m["label"] for m in payload["measures"]] == ["ew", "fixed-lambda"]
