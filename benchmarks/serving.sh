#!/usr/bin/env bash
# Every tower runtime x every retriever on the ML-100K test users, plus the
# headline ratios: onnxruntime vs eager user tower at batch 1, and end-to-end
# load_bundle(...).recommend latency. Needs the artifacts of `make fit`. The bundles in
# exports/bench-* are exported afresh, so the run measures the current exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf exports/bench-*
.venv/bin/twotower bench serving --repeats 500 \
  --json-file benchmarks/results/serving.json --markdown-file benchmarks/results/serving.md "$@"
