#!/usr/bin/env bash
# `twotower serve` under HTTP load on loopback: concurrency 1, 8 and 32, one and two
# workers, exact and HNSW search; beside it load_bundle(...).recommend in-process on one
# thread, and every answer checked against it. Needs the artifacts of `make fit`; the ONNX
# bundle is exported when exports/ has none.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=exports/movielens-100k-transformer-onnx
test -f "$bundle/manifest.json" || .venv/bin/twotower export --format onnx
.venv/bin/twotower bench serve --bundle "$bundle" --requests 3000 --concurrency 1,8,32 \
  --workers 1,2 --retrievers exact,hnsw \
  --json-file benchmarks/results/serve.json --markdown-file benchmarks/results/serve.md "$@"
