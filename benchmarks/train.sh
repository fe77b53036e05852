#!/usr/bin/env bash
# The built-in user encoders x every registered loss x 3 seeds on ML-100K:
# test Recall@10 / NDCG@10 (mean ± spread) beside the popularity baseline, and
# examples/s and seconds to the best epoch per encoder. Plugin encoders are left
# out by default (the pooling plugin's train on prefixes, ~20x slower per epoch);
# pass --encoders to choose. One torch thread: the runs stay comparable on a shared box.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench train --encoders transformer,gru,mean --seeds 0,1,2 --num-threads 1 \
  --json-file benchmarks/results/train.json --markdown-file benchmarks/results/train.md "$@"
