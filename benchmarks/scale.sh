#!/usr/bin/env bash
# Exact vs HNSW search on synthetic clustered catalogs of 10k, 100k and 1M items.
# Drop 1000000 from --sizes for a quick run (the 1M HNSW build takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench scale --sizes 10000,100000,1000000 --repeats 300 \
  --json-file benchmarks/results/scale.json --markdown-file benchmarks/results/scale.md \
  --plot benchmarks/results/scale_recall_qps.png "$@"
