#!/usr/bin/env bash
# The runs behind the published sparsity tables (issue: the Δm–sparsity front): for each data set and
# seed, fixed-λ at six λ (the front), meta-sparsity (default and the online-hypergradient variant),
# meta-dense, and the pruning control at matched sparsities; stl and ew references come from the
# published quick runs. Resumable: a run whose folder holds result.json is skipped.
#
#   WORKERS=2 OMP_NUM_THREADS=1 bash scripts/sparsity_runs.sh [WORKDIR] [BUDGETS]   # default ~/mtbench-sparsity, "quick"
#   SPECS="celebamask-synth:smiling" limits the data sets (dataset:held-out task); SEEDS="0 1 2" the seeds.
#   The published scarce/plateau tables used VARIANTS lists (run stl alone first, VARIANTS="stl", so that no
#   two runs race to train it): celebamask-synth scarce: the list below plus ew, then the meta-sparsity
#   variants "--set lam_path=prox", "--set per_layer=true", "--set inner_steps=3", "--set first_order=false";
#   celebamask-synth plateau: ew, fixed-lambda lam 0.003/0.01/0.02/0.05, meta-sparsity, prune sparsity 0.5;
#   nyuv2-synth scarce: ew, fixed-lambda lam 0.001/0.003/0.01/0.02/0.05, meta-sparsity, prune sparsity 0.5.
#   `mtbench sweep` (leaderboard/specs/) runs such grids on Ray, references first.
#   Budgets other than quick also train their own stl and ew (the quick ones come from the published runs:
#   copy leaderboard/results/*/{stl,ew}--* into WORKDIR/results first).
#   then: mtbench bench inference --no-latency WORKDIR/runs/* ; mtbench leaderboard publish WORKDIR/runs/*
set -uo pipefail
work=${1:-$HOME/mtbench-sparsity}
budgets=${2:-quick}
mkdir -p "$work" && cd "$work" || exit 1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# VARIANTS (one per line) replaces the list below, e.g. the meta-sparsity variants of the scarce study.
variants=(
  "fixed-lambda --set lam=0.001" "fixed-lambda --set lam=0.003" "fixed-lambda --set lam=0.01"
  "fixed-lambda --set lam=0.02" "fixed-lambda --set lam=0.05" "fixed-lambda --set lam=0.1"
  "meta-sparsity" "meta-sparsity --set hypergradient=online" "meta-dense"
  "prune --set sparsity=0.25" "prune --set sparsity=0.5" "prune --set sparsity=0.75"
)
if [ -n "${VARIANTS:-}" ]; then mapfile -t variants <<< "$VARIANTS"; fi
jobs() {
  for budget in $budgets; do
    for spec in ${SPECS:-celebamask-synth:smiling nyuv2-synth:depth}; do
      spec=${spec/:/ }
      for seed in ${SEEDS:-0 1 2}; do
        if [ "$budget" != quick ] && [ -z "${VARIANTS:-}" ]; then echo "$spec $budget $seed stl"; echo "$spec $budget $seed ew"; fi
        for variant in "${variants[@]}"; do echo "$spec $budget $seed $variant"; done
      done
    done
  done
}
one() {
  set -- $1
  local dataset=$1 unseen=$2 budget=$3 seed=$4; shift 4
  local tag; tag=$(echo "$*" | tr ' =' '_-' | sed 's/--set_//g')
  local out="runs/$dataset-$budget-$tag-seed$seed"
  [ -f "$out/result.json" ] && return 0
  local start; start=$(date +%s)
  if mtbench run "$@" --dataset "$dataset" --unseen "$unseen" --seed "$seed" --budget "$budget" \
       --results results --out "$out" > "logs/$dataset-$budget-$tag-$seed.txt" 2>&1; then
    echo "$dataset $budget $tag seed$seed $(( $(date +%s) - start )) s" >> times.txt
  else
    echo "$dataset $budget $tag seed$seed FAILED (logs/$dataset-$budget-$tag-$seed.txt)" >> times.txt
    rm -rf "$out"
  fi
}
export -f one
mkdir -p logs
jobs | xargs -P "${WORKERS:-2}" -I{} bash -c 'one "$@"' _ {}
