#!/usr/bin/env bash
# The GPU check of the README's "Training at scale": on a machine with GPUs, the
# equivalence test on nccl (one rank per GPU, at most two) and an ML-100K fit of EPOCHS
# epochs (default 1) with --device cuda, once as a plain process and once under torchrun
# with one rank per GPU. Writes OUT_DIR/gpu_check.log (everything printed) and
# OUT_DIR/gpu_check.json (the machine, the test summary, each fit's seconds, epoch
# throughput and test metrics). Without a GPU it runs the same on CPU (gloo, two ranks),
# which is how the script itself is checked.
#
#   bash benchmarks/gpu_check.sh OUT_DIR        # PYTHON=python3 where no .venv exists
#
# Needs twotower's dependencies importable by PYTHON (twotower itself runs from this
# tree), pytest, and ML-100K in data/ (a first `twotower fit` here fetches it; a machine
# without internet gets the folder carried over). A failing test is recorded and the
# fits still run; the script then exits non-zero.
set -euo pipefail
out=$(realpath "${1:?usage: benchmarks/gpu_check.sh OUT_DIR}")
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
epochs=${EPOCHS:-1}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
exec > >(tee "$out/gpu_check.log") 2>&1

read -r device ranks < <("$python" -c "
import torch
gpus = torch.cuda.device_count()
print('cuda', gpus) if gpus else print('cpu', 2)")
echo "device $device, $ranks rank(s) under torchrun"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the ranks' scripts import twotower

set +e
"$python" -m pytest -q -p no:cacheprovider tests/test_distributed.py | tee "$work/pytest.txt"
tests=${PIPESTATUS[0]}
set -e

fit=(fit --device "$device" --epochs "$epochs" --data-dir data --no-download --no-progress --json)
"$python" -m twotower "${fit[@]}" --artifacts-dir "$work/plain" > "$work/plain.json"
"$python" -m torch.distributed.run --standalone --nproc-per-node "$ranks" \
  -m twotower "${fit[@]}" --artifacts-dir "$work/torchrun" > "$work/torchrun.json"

"$python" - "$work" "$out/gpu_check.json" "$device" "$ranks" <<'EOF'
"""Gather the test summary and both fits into one JSON record."""
import json
import platform
import sys
from pathlib import Path

import torch

work, target, device, ranks = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def fit(name: str) -> dict:
    result = json.loads((work / f"{name}.json").read_text())
    log = [json.loads(line) for line in (work / name / "train_log.jsonl").read_text().splitlines()]
    return {
        "seconds": result["seconds"],
        "best_epoch": result["best_epoch"],
        "epoch_seconds": [round(epoch["seconds"], 3) for epoch in log],
        "examples_per_second": [round(epoch["examples_per_second"]) for epoch in log],
        "test": {key: result["test"][key] for key in ("recall@10", "ndcg@10", "mrr@10")},
    }


record = {
    "machine": {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    },
    "equivalence_test": (work / "pytest.txt").read_text().strip().splitlines()[-1],
    "fits": {"plain": fit("plain"), f"torchrun, {ranks} rank(s)": fit("torchrun")},
}
target.write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
EOF
exit "$tests"
