"""Built-in training objectives.

Each is a small class built from ``(config, item_counts)`` and called as
``loss(user_vecs, item_vecs, temperature, batch)`` (see ``hookspecs.py``).
``user_vecs[i]`` and ``item_vecs[i]`` are the user and target item of row i.

With ``loss_mask_seen`` (config) every loss leaves a row's earlier items
out of its negatives, as evaluation leaves them out of the ranking
(``twotower.data.seen``).

In data-parallel training (``twotower.distributed``) each rank holds some of
the batch's rows. Losses that score rows against other rows' items score
them against ``batch.columns(...)``, every rank's items: rows stay local,
columns are the whole batch's, so N ranks of batch B train as one process
of batch N x B. On one process every ``TrainBatch`` helper is the plain
single-batch computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import Shards


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
    # how the batch's rows are split over ranks in data-parallel training; None on one process
    shards: Shards | None = None

    def seen(self, candidates: torch.Tensor) -> torch.Tensor:
        """[B, C] bool: True where candidate item c came before row i's target.

        Rows are this rank's, candidates any items (gathered columns too).
        """
        return self.earlier_items().to(candidates.device)[:, candidates - 1]

    def columns(self, rows: torch.Tensor) -> torch.Tensor:
        """[C, ...]: every rank's ``rows``, in rank order and with gradients; ``rows`` itself
        on one process. The in-batch candidates of this rank's rows."""
        return rows if self.shards is None else self.shards.gather(rows)

    def labels(self) -> torch.Tensor:
        """[B]: each row's own column among ``columns``."""
        rows = torch.arange(len(self.target_items), device=self.target_items.device)
        return rows if self.shards is None else rows + self.shards.offset

    def column_cross_entropy(self, scores: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of this rank's columns of ``scores[B, C]`` over every rank's rows.

        The item-to-user direction, ``F.cross_entropy(scores.T, labels)`` on one
        process. Across ranks a column's normaliser is the log-sum-exp of every
        rank's log-sum-exp over its own rows, so no rank needs another's users.
        """
        labels = self.labels()
        if self.shards is None:
            return F.cross_entropy(scores.T, labels)
        # a column this rank masks entirely stays finite, and gets no gradient
        local = torch.logsumexp(scores.clamp(min=torch.finfo(scores.dtype).min), dim=0)  # [C]
        total = torch.logsumexp(self.shards.stack(local), dim=0)  # [C]
        positives = scores.gather(1, labels.unsqueeze(1)).squeeze(1)  # [B]
        return (total[labels] - positives).mean()

    def shared(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (``tensor`` on one process): a draw, such as
        sampled negatives, that the whole batch shares."""
        return tensor if self.shards is None else self.shards.broadcast(tensor)


def accidental_hits(targets: torch.Tensor, columns: torch.Tensor, labels: torch.Tensor):
    """[B, C] True where column j holds row i's own positive item but is not row i's column."""
    same = targets.unsqueeze(1) == columns.unsqueeze(0)
    own = torch.arange(len(columns), device=columns.device).unsqueeze(0) == labels.unsqueeze(1)
    return same & ~own


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

    def logits(self, user_vecs, items, targets, temperature, batch: TrainBatch) -> torch.Tensor:
        """[B, C]: this rank's rows against the batch's columns (``items``, ``targets``)."""
        scores = user_vecs / temperature @ items.T  # [B, C]
        if self.mask_hits:
            hits = accidental_hits(batch.target_items, targets, batch.labels())
            scores = scores.masked_fill(hits, float("-inf"))
        if self.mask_seen:
            scores = scores.masked_fill(batch.seen(targets), float("-inf"))
        return scores

    def __call__(self, user_vecs, item_vecs, temperature, batch: TrainBatch) -> torch.Tensor:
        targets = batch.columns(batch.target_items)  # [C]
        scores = self.logits(user_vecs, batch.columns(item_vecs), targets, temperature, batch)
        labels = batch.labels()
        user_to_item = scores
        if self.logq:
            # sampling-bias correction: s(u, j) - log q(j), popular items pay more
            user_to_item = scores - self.log_q.to(scores.device)[targets].unsqueeze(0)
        return 0.5 * (F.cross_entropy(user_to_item, labels) + batch.column_cross_entropy(scores))


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
        # the temperature divides the [B, d] users rather than the [B, N] scores: same value
        scores = user_vecs / temperature @ batch.encode_items(catalog).T  # [B, N]
        if self.mask_seen:  # the catalog's columns are earlier_items' own; in place: the
            # product's backward does not read its output
            scores.masked_fill_(batch.earlier_items().to(scores.device), float("-inf"))
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
        sampled = batch.shared(sampled.to(user_vecs.device))
        items = batch.columns(item_vecs)  # [C, d]
        candidates = torch.cat([items, batch.encode_items(sampled)])  # [C + S, d]
        scores = user_vecs / temperature @ candidates.T  # [B, C + S]
        targets, labels = batch.target_items, batch.labels()
        columns = batch.columns(targets)  # [C]
        if self.mask_hits:
            in_batch = accidental_hits(targets, columns, labels)
        else:
            in_batch = torch.zeros(
                len(targets), len(columns), dtype=torch.bool, device=targets.device
            )
        hits = torch.cat([in_batch, targets.unsqueeze(1) == sampled.unsqueeze(0)], dim=1)
        if self.mask_seen:
            hits |= batch.seen(torch.cat([columns, sampled]))
        scores = scores.masked_fill(hits, float("-inf"))
        return F.cross_entropy(scores, labels)
