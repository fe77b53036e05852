"""Recall@K, MRR@K and NDCG@K from the rank of one target per user (PROTOCOL.md).

Ranks are 1-based. Items tied with the target rank ahead of it when their
index is lower, which is the order a stable sort by descending score gives;
so a constant scorer cannot look better than it is.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import TwoTowerError


class NonFiniteScores(TwoTowerError):
    """Scores with NaN or infinity: ranks computed from them would be meaningless."""


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor) -> np.ndarray:
    """Rank of ``targets[u]`` (a column of ``scores``) among the non-excluded columns.

    ``scores[U, N]``, ``targets[U]`` (0-based columns), ``excluded[U, N]`` bool. A NaN
    compares false with everything, so a NaN model would rank every target first:
    non-finite scores are refused instead.
    """
    finite = torch.isfinite(scores).all(dim=1)
    if not finite.all():
        raise NonFiniteScores(
            f"the scores of {int((~finite).sum())} of {len(finite)} users are not finite "
            "(NaN or infinite vectors)"
        )
    target_scores = scores.gather(1, targets.view(-1, 1))  # [U, 1]
    columns = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)  # [1, N]
    ahead = (scores > target_scores) | ((scores == target_scores) & (columns < targets.view(-1, 1)))
    ahead &= ~excluded
    return (ahead.sum(dim=1) + 1).cpu().numpy()


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Mean Recall@K, MRR@K and NDCG@K over users, for every K in ``ks``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    result: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        result[f"recall@{k}"] = float(hit.mean())
        result[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
        result[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return result


def metric_ks(k_eval: int) -> tuple[int, ...]:
    """The headline K first, then 20 and 50 (PROTOCOL.md)."""
    return tuple(dict.fromkeys((k_eval, 20, 50)))
