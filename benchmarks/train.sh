#!/usr/bin/env bash
# Every registered user encoder x every registered loss x 3 seeds on ML-100K:
# test Recall@10 / NDCG@10 (mean ± spread) beside the popularity baseline, and
# examples/s and seconds to the best epoch per encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench --suite train --seeds 0,1,2 \
  --json benchmarks/results/train.json --markdown benchmarks/results/train.md "$@"
