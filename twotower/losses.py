"""Built-in training objectives.

Each is a small class built from ``(config, item_counts)`` and called as
``loss(user_vecs, item_vecs, temperature, batch)`` (see ``hookspecs.py``).
``user_vecs[i]`` and ``item_vecs[i]`` are the user and target item of row i.

With ``loss_mask_seen`` (config) every loss leaves a row's earlier items
out of its negatives, as evaluation leaves them out of the ranking
(``twotower.data.seen``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TrainBatch:
    """One training batch, as losses see it."""

    user_ids: torch.Tensor  # [B]
    history: torch.Tensor  # [B, L]
    history_mask: torch.Tensor  # [B, L]
    target_items: torch.Tensor  # [B] item indexes (1..N)
    encode_items: Callable[[torch.Tensor], torch.Tensor]  # item indexes -> vectors
    num_items: int
    # [B, N] bool over the catalog (column j = item j + 1): the items row i's user had
    # before its target, the ones evaluation masks
    earlier_items: Callable[[], torch.Tensor]

    def seen(self, candidates: torch.Tensor) -> torch.Tensor:
        """[B, C] bool: True where candidate item c came before row i's target."""
        return self.earlier_items().to(candidates.device)[:, candidates - 1]


def accidental_hits(targets: torch.Tensor) -> torch.Tensor:
    """[B, B] True where column j holds row i's own positive item but j != i."""
    same = targets.unsqueeze(1) == targets.unsqueeze(0)
    return same & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)


class InBatchSoftmax:
    """Symmetric in-batch softmax: ``0.5 * (CE(S, diag) + CE(Sᵀ, diag))``, ``S = UVᵀ/τ``.

    With ``mask_accidental_hits`` (config), an item that is the positive of
    two rows is a negative for neither; with ``loss_mask_seen``, an item row
    i's user had before its target is not row i's negative.
    """

    logq = False

    def __init__(self, config, item_counts: torch.Tensor):
        self.mask_hits = config.mask_accidental_hits
        self.mask_seen = config.loss_mask_seen
        frequency = item_counts / item_counts.sum().clamp(min=1)
        self.log_q = torch.log(frequency.clamp(min=1e-12))  # [N + 1]

    def logits(self, user_vecs, item_vecs, temperature, batch: TrainBatch) -> torch.Tensor:
        scores = user_vecs @ item_vecs.T / temperature  # [B, B]
        if self.mask_hits:
            scores = scores.masked_fill(accidental_hits(batch.target_items), float("-inf"))
        if self.mask_seen:
            scores = scores.masked_fill(batch.seen(batch.target_items), float("-inf"))
        return scores

    def __call__(self, user_vecs, item_vecs, temperature, batch: TrainBatch) -> torch.Tensor:
        scores = self.logits(user_vecs, item_vecs, temperature, batch)
        labels = torch.arange(len(scores), device=scores.device)
        user_to_item = scores
        if self.logq:
            # sampling-bias correction: s(u, j) - log q(j), popular items pay more
            user_to_item = scores - self.log_q.to(scores.device)[batch.target_items].unsqueeze(0)
        return 0.5 * (F.cross_entropy(user_to_item, labels) + F.cross_entropy(scores.T, labels))


class LogQSoftmax(InBatchSoftmax):
    """In-batch softmax with sampling-bias correction (Yi et al., RecSys 2019).

    In-batch negatives are drawn in proportion to item frequency q, so the
    user-to-item logits subtract ``log q(item)`` of each candidate column.
    The item-to-user direction samples users, not items, and is left as is.
    """

    logq = True


class FullSoftmax:
    """Cross-entropy over the whole catalog: every item (but seen ones) is a negative."""

    def __init__(self, config, item_counts: torch.Tensor):
        self.mask_seen = config.loss_mask_seen  # the catalog is encoded anew at every step

    def __call__(self, user_vecs, item_vecs, temperature, batch: TrainBatch) -> torch.Tensor:
        catalog = torch.arange(1, batch.num_items + 1, device=user_vecs.device)
        scores = user_vecs @ batch.encode_items(catalog).T / temperature  # [B, N]
        if self.mask_seen:
            scores = scores.masked_fill(batch.seen(catalog), float("-inf"))
        return F.cross_entropy(scores, batch.target_items - 1)


class MixedNegatives:
    """In-batch negatives plus ``num_negatives`` items drawn uniformly from the catalog.

    Uniform samples reach the long tail that in-batch negatives rarely show
    (Yang et al., WWW 2020). A sample equal to a row's positive is masked.
    """

    def __init__(self, config, item_counts: torch.Tensor):
        self.num_negatives = config.num_negatives
        self.mask_hits = config.mask_accidental_hits
        self.mask_seen = config.loss_mask_seen

    def __call__(self, user_vecs, item_vecs, temperature, batch: TrainBatch) -> torch.Tensor:
        sampled = torch.randint(1, batch.num_items + 1, (self.num_negatives,))
        sampled = sampled.to(user_vecs.device)
        candidates = torch.cat([item_vecs, batch.encode_items(sampled)])  # [B + S, d]
        scores = user_vecs @ candidates.T / temperature  # [B, B + S]
        targets = batch.target_items
        if self.mask_hits:
            in_batch = accidental_hits(targets)
        else:
            in_batch = torch.zeros(
                len(targets), len(targets), dtype=torch.bool, device=targets.device
            )
        hits = torch.cat([in_batch, targets.unsqueeze(1) == sampled.unsqueeze(0)], dim=1)
        if self.mask_seen:
            hits |= batch.seen(torch.cat([targets, sampled]))
        scores = scores.masked_fill(hits, float("-inf"))
        labels = torch.arange(len(targets), device=scores.device)
        return F.cross_entropy(scores, labels)
