#!/usr/bin/env bash
# A fit's stages at MovieLens scale. Synthetic workloads shaped like ML-1M, ML-10M and
# ML-25M (users, items, interactions, long-tailed popularity, sessions; generated from a
# seed) each run read -> split -> windows -> 100 training steps -> full-catalog evaluation
# -> HNSW index in a fresh process: seconds and peak memory per stage, and how each grows
# with size. Then training examples/s on 1 and 2 ranks (torchrun, gloo), one torch thread
# per rank. Default settings otherwise (`twotower fit --help`); pass flags to change them.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench scale-train --workloads ml-1m,ml-10m,ml-25m --steps 100 --ranks 1,2 \
  --num-threads 1 \
  --json-file benchmarks/results/scale_train.json \
  --markdown-file benchmarks/results/scale_train.md "$@"
