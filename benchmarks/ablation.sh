#!/usr/bin/env bash
# What each default is worth on MovieLens-100K: the default `twotower fit` and the
# default with one piece taken back at a time (seen items back among the loss's
# negatives, no weight averaging, nn.Embedding's N(0, 1) init, DESIGN.md's MLP on the
# item tower or on the user head, no user ID, no genres, cosine with a learned
# temperature, in-batch logQ softmax instead of the full catalog, dropout 0.5), and
# the SASRec preset; three seeds each, valid and test Recall@10 / NDCG@10 and Recall@10
# by target position. One torch thread per fit. About 40 fits: pass --seeds 0 for a
# quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/twotower bench accuracy --seeds 0,1,2 --num-threads 1 \
  --contenders default,loss_mask_seen=false,ema_decay=0,init_std=1.0,item_mlp=true,user_mlp=true,use_user_id=false,use_item_features=false,normalize=true+learn_temperature=true+temperature=0.07,loss=logq-softmax,dropout=0.5,configs/sasrec.toml \
  --json-file benchmarks/results/ablation.json --markdown-file benchmarks/results/ablation.md "$@"
