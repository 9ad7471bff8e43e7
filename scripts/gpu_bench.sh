#!/usr/bin/env bash
# Training-step benchmark for a GPU machine (not run on the CPU development machine): the paper budget
# (ResNet-50 backbone, 256×256 inputs, batch 8), ew, fixed-lambda and meta-sparsity with first- and
# second-order meta-gradients, on both synthetic data sets; bf16 autocast, channels-last, cudnn.benchmark
# and fused Adam as a CUDA run uses them (non-deterministic by default on CUDA).
#
#   scripts/gpu_bench.sh [OUT_DIR]      (default: bench-train-<date>); extra options via $BENCH_OPTIONS,
#                                        e.g. BENCH_OPTIONS="--steps 20 --repeats 5" or "--deterministic"
set -euo pipefail
out="${1:-bench-train-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
for dataset in nyuv2-synth celebamask-synth; do
    mtbench bench train ew fixed-lambda meta-sparsity meta-sparsity:first_order=false \
        --budget paper --dataset "$dataset" --device cuda --warmup 3 --steps 10 --repeats 5 \
        --json "$out/$dataset.json" ${BENCH_OPTIONS:-} | tee "$out/$dataset.txt"
done
echo "tables and JSON in $out/"
