#!/usr/bin/env bash
# The default `twotower fit` on MovieLens-100K, three seeds: accuracy against the
# popularity baseline and wall time per fit (early stopping included).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench --suite train \
  --encoders transformer --losses logq-softmax --seeds 0,1,2 \
  --json benchmarks/results/fit_ml100k.json \
  --markdown benchmarks/results/fit_ml100k.md "$@"
