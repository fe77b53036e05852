"""Exact full-catalog evaluation under PROTOCOL.md, and the popularity floor.

Every item of the catalog is scored by brute force; each user's conditioning
history (all earlier positives, not only the truncated window) is removed
from the ranking unless ``mask_seen`` is off. Users are scored in chunks, so
memory is bounded by chunk x catalog, never users x catalog. In data-parallel
training each rank scores its share of the users and the ranks are gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import distributed
from .data.padding import pad_left
from .data.split import Split
from .distributed import SINGLE, Context
from .metrics import NonFiniteScores, metric_ks, metrics_from_ranks, target_ranks
from .towers.model import TwoTowerModel

STAGES = ("valid", "test")
CHUNK = 1024  # users scored at once

# scores of a chunk of queries: row numbers into the queries -> [rows, N]
Scorer = Callable[[np.ndarray], torch.Tensor]


def ranks_of(
    score: Scorer,
    split: Split,
    users: np.ndarray,
    targets: np.ndarray,
    mask_seen: bool,
    chunk: int = CHUNK,
) -> np.ndarray:
    """Rank of each query's target item among the catalog, its user's earlier items removed.

    Query r is user ``users[r]`` asking for their next item after everything
    before ``targets[r]``.
    """
    ranks = []
    for start in range(0, len(users), chunk):
        rows = np.arange(start, min(start + chunk, len(users)))
        scores = score(rows).float().cpu()
        if mask_seen:
            excluded = split.earlier_items.before(users[rows], targets[rows])
        else:
            excluded = torch.zeros_like(scores, dtype=torch.bool)
        ranks.append(target_ranks(scores, torch.as_tensor(targets[rows] - 1), excluded))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def stage_queries(split: Split, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """Every user (in index order) and their ``valid`` or ``test`` target."""
    return np.arange(1, split.num_users + 1), split.targets(stage)


def rank_and_score(
    scores: torch.Tensor, split: Split, stage: str, mask_seen: bool, k_eval: int
) -> dict[str, float]:
    """Metrics of ``scores[U, N]`` (users in index order, items 1..N as columns)."""
    users, targets = stage_queries(split, stage)
    ranks = ranks_of(lambda rows: scores[rows], split, users, targets, mask_seen)
    return metrics_from_ranks(ranks, metric_ks(k_eval))


def model_scorer(
    model: TwoTowerModel, users: np.ndarray, histories: Sequence[np.ndarray], max_len: int
) -> Scorer:
    """Scores of the catalog for the queries ``(users[r], histories[r])``."""
    device = model.log_temperature.device
    catalog = model.catalog_vectors()  # [N, d]

    def score(rows: np.ndarray) -> torch.Tensor:
        ids, mask = pad_left([histories[r] for r in rows], max_len)
        with model.encoder_failures("to encode users for evaluation"):
            vectors = model.encode_users(
                torch.as_tensor(users[rows], device=device),
                torch.as_tensor(ids, device=device),
                torch.as_tensor(mask, device=device),
            )
        model.check_user_vectors(vectors, torch.Size([len(rows)]))
        return vectors @ catalog.T  # [rows, N]

    return score


@torch.no_grad()
def model_ranks(
    model: TwoTowerModel,
    split: Split,
    users: np.ndarray,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    config,
) -> np.ndarray:
    """Ranks of ``targets`` for the model's vectors of ``(users, histories)``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        score = model_scorer(model, users, histories, config.max_history_len)
        return ranks_of(score, split, users, targets, config.mask_seen)
    finally:
        model.train(was_training)


def evaluate_model(
    model: TwoTowerModel, split: Split, stage: str, config, context: Context = SINGLE
) -> dict[str, float]:
    """Exact full-catalog metrics of ``model`` on the ``valid`` or ``test`` targets.

    On a group each rank ranks its share of the users; every rank gets the
    metrics of all of them, or every rank raises when any rank's scores are
    not finite.
    """
    users, targets = stage_queries(split, stage)
    mine = context.shard(len(users))
    users, targets = users[mine], targets[mine]
    histories = [split.history(u, stage) for u in users]
    try:
        ranks = model_ranks(model, split, users, histories, targets, config)
    except NonFiniteScores:
        if not context.distributed:
            raise
        ranks = None
    ranks = distributed.concatenate(ranks, context)
    if ranks is None:
        raise NonFiniteScores("the scores of some users are not finite (NaN or infinite vectors)")
    return metrics_from_ranks(ranks, metric_ks(config.k_eval))


def recall_by_position(
    model: TwoTowerModel, split: Split, config, offsets: Sequence[int] = (5, 4, 3, 2, 1)
) -> dict[str, float]:
    """Recall@k_eval of each user's item at ``-offset``, given every item before it.

    Offset 1 is the test target, 2 the validation target, 3 and beyond are
    training targets. A model far better on its training positions than on
    validation over-fits; one no better on them under-fits. Users with no
    item before that position are left out.
    """
    result = {}
    for offset in offsets:
        users = np.array(
            [u for u in range(1, split.num_users + 1) if len(split.sequences[u - 1]) > offset],
            dtype=np.int64,
        )
        histories = [split.sequences[u - 1][:-offset] for u in users]
        targets = np.array([split.sequences[u - 1][-offset] for u in users], dtype=np.int64)
        ranks = model_ranks(model, split, users, histories, targets, config)
        result[str(-offset)] = float((ranks <= config.k_eval).mean()) if len(ranks) else 0.0
    return result


def popularity_scores(split: Split, stage: str) -> torch.Tensor:
    """Each item's count in the conditioning data of ``stage``, the same for every user."""
    seen = np.concatenate([split.history(u, stage) for u in range(1, split.num_users + 1)])
    counts = np.bincount(seen - 1, minlength=split.num_items).astype(np.float32)
    return torch.as_tensor(counts).unsqueeze(0).expand(split.num_users, -1)


def evaluate_popularity(split: Split, stage: str, config) -> dict[str, float]:
    """The floor every table shows: rank items by how often they were seen."""
    scores = popularity_scores(split, stage)
    return rank_and_score(scores, split, stage, config.mask_seen, config.k_eval)
