#!/usr/bin/env bash
# Accuracy on MovieLens-100K under PROTOCOL.md, three seeds per contender: the default
# `twotower fit`, the SASRec preset (the sanity row), the default with a GRU and with a
# bag-of-items user tower, and DESIGN.md's first design; popularity beside them. Valid
# and test Recall@10 / NDCG@10, best epoch, wall time per fit (early stopping included),
# and Recall@10 by target position. Two torch threads, as `twotower fit` uses here.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench accuracy --seeds 0,1,2 --num-threads 2 \
  --contenders default,configs/sasrec.toml,user_encoder=gru,user_encoder=mean,configs/design.toml \
  --json-file benchmarks/results/accuracy.json --markdown-file benchmarks/results/accuracy.md "$@"
