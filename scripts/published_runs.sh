#!/usr/bin/env bash
# The runs behind the published leaderboard: quick budget, seeds 0-2, every built-in method, on
# nyuv2-synth (depth held out) and celebamask-synth (smiling held out). Idempotent: a run whose
# folder already holds result.json is skipped, so an interrupted sweep resumes where it stopped.
#
#   bash scripts/published_runs.sh [WORKDIR]        # default WORKDIR: ~/mtbench-sweep
#   ONLY=celebamask-synth OMP_NUM_THREADS=1 bash scripts/published_runs.sh   # one data set per worker:
#   on two cores, two one-thread workers finish sooner than one two-thread worker; SEEDS="2" limits the seeds
#   mtbench bench inference --no-latency WORKDIR/runs/*   (parameters and FLOPs for the table)
#   mtbench leaderboard publish WORKDIR/runs/*
set -uo pipefail
work=${1:-$HOME/mtbench-sweep}
mkdir -p "$work" && cd "$work" || exit 1
methods="stl ew uw dwa gradnorm pcgrad mgda cagrad famo fixed-lambda meta-dense meta-sparsity"
for seed in ${SEEDS:-0 1 2}; do
  for spec in "nyuv2-synth depth" "celebamask-synth smiling"; do
    set -- $spec
    [ -n "${ONLY:-}" ] && [ "$1" != "$ONLY" ] && continue
    for method in $methods; do
      out="runs/$1-$method-seed$seed"
      [ -f "$out/result.json" ] && continue
      start=$(date +%s)
      if mtbench run "$method" --dataset "$1" --unseen "$2" --seed "$seed" --budget quick --results results \
           --out "$out" > "logs-$1-$method-$seed.txt" 2>&1; then
        echo "$1 $method seed$seed $(( $(date +%s) - start )) s" >> times.txt
      else
        echo "$1 $method seed$seed FAILED (see logs-$1-$method-$seed.txt)" >> times.txt
        rm -rf "$out"
      fi
    done
  done
done
