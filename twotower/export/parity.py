"""Parity: exported towers compute what the PyTorch model computes (exports/README.md).

On every user's full history, a length-1 history and a random prefix of it
(so at least two histories per user), plus a cold user, the exported user
vectors must match PyTorch's within 1e-5 and give the same exact top-10 for
99.9% of them, and the cold user must be finite. int8 graphs are never
silently lossy: their parity and the change in test Recall@10 are recorded
instead of enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..contracts import Towers
from ..errors import TwoTowerError
from ..metrics import found_ranks, metrics_from_ranks, overlap_at_k
from ..recommendation import Recommender, encode_histories, top_k
from ..retrievers.exact import ExactRetriever

MAX_ABS_DIFF = 1e-5
MIN_TOP10_AGREEMENT = 0.999


@dataclass
class Queries:
    """User indexes and their histories (item indexes), one query per row."""

    users: np.ndarray  # [Q]
    histories: list[np.ndarray]


def parity_queries(recommender: Recommender, seed: int = 0) -> Queries:
    """The cold user first, then each user's full history, its first item alone, a random
    prefix."""
    rng = np.random.default_rng(seed)
    users, histories = [0], [np.zeros(0, dtype=np.int64)]
    for user_id, indexes in recommender.history_indexes.items():
        user = recommender.user_index[user_id]
        cut = int(rng.integers(1, len(indexes) + 1))
        for part in (indexes, indexes[:1], indexes[:cut]):
            users.append(user)
            histories.append(part)
    return Queries(np.array(users, dtype=np.int64), histories)


def top10(vectors: np.ndarray, item_vectors: np.ndarray, queries: Queries) -> np.ndarray:
    """Exact top-10 rows of each query, its history's items left out."""
    return top_k(ExactRetriever(item_vectors), vectors, queries.histories, 10)[0]


def recall_through(towers: Towers, item_vectors: np.ndarray, recommender: Recommender) -> float:
    """Test Recall@10 through ``towers``: condition on all but the last item, hit it."""
    users, histories, targets = recommender.test_queries()
    queries = Queries(users, histories)
    vectors = encode_histories(towers, users, histories, recommender.max_history_len)
    ranks = found_ranks(top10(vectors, item_vectors, queries), targets)
    return metrics_from_ranks(ranks, (10,))["recall@10"]


def check_parity(
    recommender: Recommender, towers: Towers, item_vectors: np.ndarray, quantized: bool
) -> dict[str, Any]:
    """Compare exported ``towers`` (whose item vectors are ``item_vectors``) with the PyTorch
    towers ``recommender`` holds; raise when fp32 towers miss the bounds."""
    max_len = recommender.max_history_len
    queries = parity_queries(recommender)
    reference_users = encode_histories(
        recommender.towers, queries.users, queries.histories, max_len
    )
    exported_users = encode_histories(towers, queries.users, queries.histories, max_len)
    reference_items = recommender.item_vectors
    reference_top = top10(reference_users, reference_items, queries)
    exported_top = top10(exported_users, item_vectors, queries)
    torch_recall = recall_through(recommender.towers, reference_items, recommender)
    bundle_recall = recall_through(towers, item_vectors, recommender)
    lengths = [len(h) for h in queries.histories]
    report = {
        "histories_checked": len(queries.users),
        "history_lengths": [int(min(lengths[1:])), int(min(max(lengths), max_len))],
        "max_abs_diff": {
            "user_tower": float(np.abs(reference_users - exported_users).max()),
            "item_tower": float(np.abs(reference_items - item_vectors).max()),
        },
        "top10_agreement": float((reference_top == exported_top).all(axis=1).mean()),
        "top10_overlap": overlap_at_k(exported_top, reference_top),
        "cold_user_finite": bool(np.isfinite(exported_users[0]).all()),
        "test_recall@10": {
            "torch": torch_recall,
            "bundle": bundle_recall,
            "delta": bundle_recall - torch_recall,
        },
    }
    if not report["cold_user_finite"]:
        raise TwoTowerError("export failed: a user with no history gets a non-finite vector")
    if not quantized:
        worst = max(report["max_abs_diff"].values())
        if worst > MAX_ABS_DIFF or report["top10_agreement"] < MIN_TOP10_AGREEMENT:
            raise TwoTowerError(
                f"export failed parity: max abs diff {worst:.2e} (limit {MAX_ABS_DIFF:.0e}), "
                f"top-10 agreement {report['top10_agreement']:.4f} "
                f"(limit {MIN_TOP10_AGREEMENT})"
            )
    return report
