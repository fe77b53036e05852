"""Exact full-catalog evaluation under PROTOCOL.md, and the popularity floor.

Every item of the catalog is scored by brute force; each user's conditioning
history (all earlier positives, not only the truncated window) is removed
from the ranking unless ``mask_seen`` is off.
"""

from __future__ import annotations

import numpy as np
import torch

from .data.padding import pad_left
from .data.split import Split
from .metrics import metric_ks, metrics_from_ranks, target_ranks
from .towers.model import TwoTowerModel

STAGES = ("valid", "test")


def rank_and_score(
    scores: torch.Tensor, split: Split, stage: str, mask_seen: bool, k_eval: int
) -> dict[str, float]:
    """Metrics of ``scores[U, N]`` (users in index order, items 1..N as columns)."""
    targets = split.targets(stage)
    users = np.arange(1, split.num_users + 1)
    excluded = (
        split.earlier_items.before(users, targets)  # the conditioning history of ``stage``
        if mask_seen
        else torch.zeros_like(scores, dtype=torch.bool)
    )
    targets = torch.as_tensor(targets - 1)
    ranks = target_ranks(scores.float(), targets, excluded)
    return metrics_from_ranks(ranks, metric_ks(k_eval))


@torch.no_grad()
def user_vectors(
    model: TwoTowerModel, split: Split, stage: str, max_history_len: int, batch_size: int = 512
) -> torch.Tensor:
    """Encode every user on the conditioning history of ``stage``."""
    device = model.log_temperature.device
    vectors = []
    for start in range(0, split.num_users, batch_size):
        users = range(start + 1, min(start + batch_size, split.num_users) + 1)
        ids, mask = pad_left([split.history(u, stage) for u in users], max_history_len)
        vectors.append(
            model.encode_users(
                torch.as_tensor(list(users), device=device),
                torch.as_tensor(ids, device=device),
                torch.as_tensor(mask, device=device),
            )
        )
    return torch.cat(vectors)


@torch.no_grad()
def evaluate_model(model: TwoTowerModel, split: Split, stage: str, config) -> dict[str, float]:
    """Exact full-catalog metrics of ``model`` on the ``valid`` or ``test`` targets."""
    was_training = model.training
    model.eval()
    try:
        users = user_vectors(model, split, stage, config.max_history_len)
        scores = users @ model.catalog_vectors().T  # [U, N]
    finally:
        model.train(was_training)
    return rank_and_score(scores.cpu(), split, stage, config.mask_seen, config.k_eval)


def popularity_scores(split: Split, stage: str) -> torch.Tensor:
    """Each item's count in the conditioning data of ``stage``, the same for every user."""
    counts = np.zeros(split.num_items, dtype=np.float32)
    for user in range(1, split.num_users + 1):
        np.add.at(counts, split.history(user, stage) - 1, 1.0)
    return torch.as_tensor(counts).unsqueeze(0).expand(split.num_users, -1)


def evaluate_popularity(split: Split, stage: str, config) -> dict[str, float]:
    """The floor every table shows: rank items by how often they were seen."""
    scores = popularity_scores(split, stage)
    return rank_and_score(scores, split, stage, config.mask_seen, config.k_eval)
