"""Recall@K, MRR@K and NDCG@K from the rank of one target per user (PROTOCOL.md).

Ranks are 1-based. Items tied with the target rank ahead of it when their
index is lower, which is the order a stable sort by descending score gives;
so a constant scorer cannot look better than it is.

Ranks come from full-catalog scores (``target_ranks``, torch) or from
retrieved top-K lists (``found_ranks``, numpy only: export parity and the
bench use it beside ``overlap_at_k``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import TwoTowerError

if TYPE_CHECKING:
    import torch


class NonFiniteScores(TwoTowerError):
    """Scores with NaN or infinity: ranks computed from them would be meaningless."""


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor) -> np.ndarray:
    """Rank of ``targets[u]`` (a column of ``scores``) among the non-excluded columns.

    ``scores[U, N]``, ``targets[U]`` (0-based columns), ``excluded[U, N]`` bool. A NaN
    compares false with everything, so a NaN model would rank every target first:
    non-finite scores are refused instead.
    """
    import torch  # here: the metrics of retrieved lists need numpy only

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


def found_ranks(found: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of ``targets[q]`` in row ``q`` of retrieved ids ``found[Q, K]`` (1-based), or
    ``K + 1`` when it was not retrieved: ranks for ``metrics_from_ranks`` at any k <= K."""
    hits = np.asarray(found) == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, hits.shape[1] + 1)


def overlap_at_k(found: np.ndarray, reference: np.ndarray) -> float:
    """Mean share of each row of ``reference[Q, k]`` that the same row of ``found`` holds:
    an approximate search's recall against exact search (overlap@k)."""
    k = np.asarray(reference).shape[1]
    shared = [len(set(a) & set(b)) / k for a, b in zip(found, reference, strict=True)]
    return float(np.mean(shared))


def metric_ks(k_eval: int) -> tuple[int, ...]:
    """The headline K first, then 20 and 50 (PROTOCOL.md)."""
    return tuple(dict.fromkeys((k_eval, 20, 50)))
