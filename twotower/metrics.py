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


BLOCK = 1 << 22  # scores compared at once: 16 MiB of float32, near cache size


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor) -> np.ndarray:
    """Rank of ``targets[u]`` (a column of ``scores``) among the non-excluded columns.

    ``scores[U, N]``, ``targets[U]`` (0-based columns), ``excluded[U, N]`` bool. A NaN
    compares false with everything, so a NaN model would rank every target first:
    non-finite scores are refused instead.

    Evaluation calls this on chunks of a whole catalog, so it is written for
    memory traffic: a row sum finds non-finite rows (a finite sum means a
    finite row), rows go through in blocks that fit in cache, and ties with
    the target, rare with a model's scores, are sorted out where they occur.
    """
    check_finite(scores)  # torch is imported in these helpers: found_ranks needs numpy only
    rows = max(1, BLOCK // max(1, scores.shape[1]))
    parts = [
        _block_ranks(scores[i : i + rows], targets[i : i + rows], excluded[i : i + rows])
        for i in range(0, len(scores), rows)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _block_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor):
    import torch

    target_scores = scores.gather(1, targets.view(-1, 1))  # [U, 1]
    ahead = count(scores > target_scores)  # [U], excluded columns included
    # excluded columns are few: the ones ahead are found one by one and taken back
    rows, columns = excluded.nonzero(as_tuple=True)
    over = scores[rows, columns] > target_scores[rows, 0]
    ahead -= torch.bincount(rows[over], minlength=len(scores))
    level = scores == target_scores  # [U, N]: the target itself and its ties
    tied = torch.nonzero(count(level) > 1).squeeze(1)
    if len(tied):  # a tie ranks ahead of the target when its column is lower
        columns = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)  # [1, N]
        lower = columns < targets[tied].view(-1, 1)
        ahead[tied] += count(level[tied] & lower & ~excluded[tied])
    return (ahead + 1).cpu().numpy()


def count(flags: torch.Tensor) -> torch.Tensor:
    """[U] True values per row of ``flags[U, N]``; summed as bytes, twice as fast as bools."""
    import torch

    return flags.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def check_finite(scores: torch.Tensor) -> None:
    """Refuse scores with a NaN or an infinity, naming how many rows have one."""
    import torch

    suspects = torch.nonzero(~torch.isfinite(scores.sum(dim=1))).squeeze(1)
    if not len(suspects):
        return
    bad = int((~torch.isfinite(scores[suspects]).all(dim=1)).sum())
    if bad:
        raise NonFiniteScores(
            f"the scores of {bad} of {len(scores)} users are not finite (NaN or infinite vectors)"
        )


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
    an approximate search's recall against exact search (overlap@k). A row ends in -1
    where fewer than k items were left to give; those slots are no items."""
    shared = []
    for a, b in zip(found, reference, strict=True):
        wanted = set(b.tolist()) - {-1}
        shared.append(len(wanted & set(a.tolist())) / len(wanted) if wanted else 1.0)
    return float(np.mean(shared))


def metric_ks(k_eval: int) -> tuple[int, ...]:
    """The headline K first, then the protocol's 10, 20 and 50 (PROTOCOL.md: every
    metrics file holds its @10 keys, whatever the headline)."""
    return tuple(dict.fromkeys((k_eval, 10, 20, 50)))
