"""One training step on one rank of a gloo or nccl group, for tests/test_distributed.py.

Started once per rank with the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and, as argv[1], a JSON request: the
device (``cpu``: gloo; ``cuda``: nccl, one GPU per rank), the folder to
write into and the cases to run. For each case it builds the step of
``twotower.train`` on the tiny synthetic split, trains on this rank's share
of the first global batch, and rank 0 writes the whole batch's loss and the
averaged gradients to ``<folder>/<case>.npz``. Without that environment
(``main`` called in the test process) it writes the one-process reference
of batch N x B the ranks must match.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from twotower import TwoTowerConfig, distributed
from twotower.api import prepare
from twotower.testing import first_step_loss
from twotower.train import start_training


def config_of(case: dict, batch: int, device: str) -> TwoTowerConfig:
    """The tiny synthetic run, without dropout (a mask would differ per rank)."""
    return TwoTowerConfig(
        dataset="synthetic",
        device=device,
        max_history_len=8,
        dropout=0.0,
        num_threads=1,
        batch_size=batch,
        sequence_batch_size=batch,
        extra={"synthetic_num_users": 60, "synthetic_num_items": 40},
        **case["settings"],
    )


def one_step(
    case: dict, batch: int, device: str, context: distributed.Context
) -> dict[str, np.ndarray]:
    config = config_of(case, batch, device)
    torch.set_default_dtype(getattr(torch, case["dtype"]))  # the towers' parameters
    try:
        training = start_training(config, prepare(config), context)
    finally:
        torch.set_default_dtype(torch.float32)
    loss = first_step_loss(training, config.seed)  # batch rows per rank
    result = {"loss": np.array(distributed.mean(loss.item(), context))}
    for name, parameter in training.model.named_parameters():
        if parameter.grad is not None:
            result[f"grad:{name}"] = parameter.grad.cpu().numpy()
    return result


def main(request: dict) -> None:
    with distributed.session(request["device"]) as context:
        batch = request["batch"] // context.world_size  # the whole batch is the same
        for case in request["cases"]:
            result = one_step(case, batch, request["device"], context)
            if context.is_main:
                np.savez(Path(request["folder"]) / f"{case['name']}.npz", **result)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
