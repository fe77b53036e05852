"""Implicit filter, vocabularies and the per-user temporal split (PROTOCOL.md, "Split").

Item and user indexes start at 1: index 0 is the padding item in histories
and the "unknown user" of cold-start queries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property

import numpy as np
import pandas as pd

from ..errors import TwoTowerError
from .dataset import Dataset
from .seen import EarlierItems


@dataclass
class Split:
    """Every user's ordered positives and the item metadata, as index arrays.

    ``sequences[u - 1]`` holds user ``u``'s positives in time order: all but
    the last two are training items, then the validation item, then the test
    item.
    """

    user_ids: list[str]  # raw id of user index i + 1
    item_ids: list[str]  # raw id of item index i + 1
    sequences: list[np.ndarray]  # int64 item indexes per user
    genre_names: list[str]
    item_genres: np.ndarray  # [num_items + 1, num_genres] float32 multi-hot; row 0 = padding
    titles: list[str]  # title of item index i + 1 ("" when unknown)
    genres: list[list[str]]  # genres of item index i + 1
    # items of the catalog without a row in the dataset's items table (none without a table)
    undescribed: list[str] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def train(self, user: int) -> np.ndarray:
        return self.sequences[user - 1][:-2]

    def history(self, user: int, stage: str) -> np.ndarray:
        """The conditioning history of ``stage``: train items for valid, + valid for test."""
        sequence = self.sequences[user - 1]
        return {"valid": sequence[:-2], "test": sequence[:-1], "serve": sequence}[stage]

    @cached_property
    def earlier_items(self) -> EarlierItems:
        """Each user's items before any of their items: what evaluation and losses mask."""
        return EarlierItems(self.sequences, self.num_items)

    def targets(self, stage: str) -> np.ndarray:
        position = {"valid": -2, "test": -1}[stage]
        return np.array([s[position] for s in self.sequences], dtype=np.int64)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of what evaluation depends on: the users, the items and every user's order.

        Computed once per split: a distributed fit compares it across ranks and
        then records it in the manifest (seconds at ML-25M size)."""
        content = [self.user_ids, self.item_ids, [s.tolist() for s in self.sequences]]
        return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()


def integer_values(texts: np.ndarray) -> np.ndarray:
    """The integers ``texts`` spell (each spells one): int64 where they fit; past it
    (20-digit ids), exact Python integers read from the text, since int64 would wrap
    and float64 would round them."""
    numeric = pd.to_numeric(pd.Series(texts, dtype=object))
    if numeric.dtype == np.int64:
        return numeric.to_numpy()
    return np.array([int(Decimal(text)) for text in texts], dtype=object)


def id_order(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order of distinct ``ids`` (strings) and each id's key rank: first the ids that
    spell integers, by their value, then the others, as text.

    Two ids compare the same way whatever other ids the catalog holds, so a
    timestamp tie (broken by this order) is not decided by an item elsewhere.
    Ids with equal values ("1" and "01") are ordered by their text and share
    a key rank.
    """
    order = np.argsort(ids, kind="stable")  # as text
    numeric = pd.to_numeric(pd.Series(ids[order], dtype=object), errors="coerce")
    whole = (numeric.notna() & (numeric % 1 == 0)).to_numpy()
    values = integer_values(ids[order][whole])
    by_value = np.argsort(values, kind="stable")
    order = np.concatenate([order[whole][by_value], order[~whole]])
    values = values[by_value]
    new_value = np.concatenate([[True], values[1:] != values[:-1]])[: len(values)]
    starts_rank = np.concatenate([new_value, np.ones(len(ids) - len(values), dtype=bool)])
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.cumsum(starts_rank) - 1
    return order, ranks


def positive_rows(
    frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, min_rating: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows with ``rating >= min_rating`` (every row when there is no rating), the earliest of
    each user-item pair, in source order; and each row's rank among the distinct timestamps.

    A repeated positive would be both history and target, and masking seen
    items would make it unreachable; only its first occurrence counts (the
    first in the file among equal timestamps).
    """
    rows = np.arange(len(frame))
    if "rating" in frame.columns:
        rows = np.flatnonzero(frame["rating"].to_numpy() >= min_rating)
    timestamps = frame["timestamp"].to_numpy()
    by_time = rows[np.argsort(timestamps[rows], kind="stable")]
    pairs = users[by_time].astype(np.int64) * (int(items.max(initial=0)) + 1) + items[by_time]
    first = np.unique(pairs, return_index=True)[1]
    ordered = timestamps[by_time]
    ranks = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])]) if len(rows) else rows
    by_row = np.argsort(by_time[first])  # back to source order
    return by_time[first][by_row], ranks[first][by_row]


def sequence_order(users: np.ndarray, times: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The stable order of rows by (user, time, key), all three non-negative integer ranks.

    One sort of the three packed into an int64 while they fit (ML-25M uses
    under 2^57), which is several times faster than ``np.lexsort``.
    """
    sizes = [int(column.max(initial=0)) + 1 for column in (users, times, keys)]
    if float(np.prod(sizes, dtype=np.float64)) >= 2.0**62:
        return np.lexsort((keys, times, users))
    packed = (users * sizes[1] + times) * sizes[2] + keys
    return np.argsort(packed, kind="stable")


def make_split(dataset: Dataset, min_rating: float, min_user_positives: int = 3) -> Split:
    """Apply PROTOCOL.md steps 1-4 to a dataset.

    Ids are factorised once into integer codes and every later step is a
    numpy sort, count or lookup over those codes, so the cost grows with the
    interactions at a sort's pace (ML-25M's 25 million rows: seconds).
    """
    if min_user_positives < 3:
        raise TwoTowerError("min_user_positives must be at least 3 (train, valid and test)")
    frame = dataset.interactions
    user_codes, user_names = pd.factorize(frame["user"])
    item_codes, item_names = pd.factorize(frame["item"])
    rows, times = positive_rows(frame, user_codes, item_codes, min_rating)
    counts = np.bincount(user_codes[rows], minlength=len(user_names))
    enough = counts[user_codes[rows]] >= min_user_positives
    rows, times = rows[enough], times[enough]
    if not len(rows):
        raise TwoTowerError(
            f"nothing left after filtering {dataset.name}: no user has "
            f"{min_user_positives}+ positives with rating >= {min_rating}"
        )
    users, items = user_codes[rows], item_codes[rows]

    # the users and items left, in id order: index i + 1 is the i-th
    present_users = np.flatnonzero(np.bincount(users, minlength=len(user_names)))
    present_items = np.flatnonzero(np.bincount(items, minlength=len(item_names)))
    user_order = present_users[id_order(np.asarray(user_names[present_users], dtype=object))[0]]
    item_order, item_ranks = id_order(np.asarray(item_names[present_items], dtype=object))
    user_index = np.zeros(len(user_names), dtype=np.int64)
    user_index[user_order] = np.arange(len(user_order))
    item_index = np.zeros(len(item_names), dtype=np.int64)
    item_index[present_items[item_order]] = np.arange(1, len(item_order) + 1)
    key_rank = np.zeros(len(item_names), dtype=np.int64)
    key_rank[present_items] = item_ranks

    # each user's positives by time, ties by item id, then by position in the file
    order = sequence_order(user_index[users], times, key_rank[items])
    ends = np.cumsum(np.bincount(user_index[users], minlength=len(user_order)))
    sequences = np.split(item_index[items[order]], ends[:-1])

    item_ids = [str(i) for i in item_names[present_items[item_order]]]
    user_ids = [str(u) for u in user_names[user_order]]
    features = _item_features(dataset, item_ids)
    return Split(user_ids, item_ids, sequences, *features)


def _item_features(dataset: Dataset, item_ids: list[str]):
    """Multi-hot genres, titles and genre lists aligned with item indexes, and the items
    the table does not describe.

    An items table that names none of the items is refused: its ids are
    spelled otherwise (``10.0`` for ``10``), and every title would be lost.
    """
    items = dataset.items
    if items is None:
        no_genres = np.zeros((len(item_ids) + 1, 0), dtype=np.float32)
        return [], no_genres, [""] * len(item_ids), [[] for _ in item_ids], []
    if items.empty:
        raise TwoTowerError(f"{dataset.name}: its items table lists no items")
    by_id = items.drop_duplicates("item").set_index("item")
    known = pd.Index(item_ids).isin(by_id.index)
    if not known.any():
        raise TwoTowerError(
            f"{dataset.name}: none of the {len(by_id)} items of its items table is an item of "
            f"its interactions (items: {', '.join(map(repr, by_id.index[:3]))}, ...; "
            f"interactions: {', '.join(map(repr, item_ids[:3]))}, ...)"
        )
    aligned = by_id.reindex(item_ids)
    titles = [str(t) if k else "" for t, k in zip(aligned["title"], known, strict=True)]
    genres = [list(g) if k else [] for g, k in zip(aligned["genres"], known, strict=True)]
    genre_names = sorted({g for gs in genres for g in gs})
    column = {g: j for j, g in enumerate(genre_names)}
    multi_hot = np.zeros((len(item_ids) + 1, len(genre_names)), dtype=np.float32)
    rows = [row for row, gs in enumerate(genres, start=1) for _ in gs]
    multi_hot[rows, [column[g] for gs in genres for g in gs]] = 1.0
    undescribed = [item for item, described in zip(item_ids, known, strict=True) if not described]
    return genre_names, multi_hot, titles, genres, undescribed


def train_items(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Every user's train items concatenated in user order, and where user u's begin
    (``starts[u - 1]``; ``starts[-1]`` is the total)."""
    lengths = np.array([len(s) - 2 for s in split.sequences], dtype=np.int64)
    items = np.concatenate([s[:-2] for s in split.sequences] or [np.zeros(0, np.int64)])
    return items, np.concatenate([[0], np.cumsum(lengths)])


@dataclass
class Examples:
    """Prefix/next-item training examples (PROTOCOL.md step 5).

    Histories are read from the users' train items when a batch asks, not
    held as an [M, L] matrix (on ML-25M 12 million examples of 50 items,
    4.8 GB): example m's history is ``items[firsts[m]:ends[m]]`` cut to its
    last L items, and its target is ``items[ends[m]]``.
    """

    users: np.ndarray  # [M] user index
    targets: np.ndarray  # [M] item index
    items: np.ndarray  # every user's train items, concatenated
    firsts: np.ndarray  # [M] where example m's user's items begin in ``items``
    ends: np.ndarray  # [M] where its history ends (the position of its target)
    max_history_len: int

    def __len__(self) -> int:
        return len(self.targets)

    def histories(self, rows: np.ndarray | None = None) -> np.ndarray:
        """[R, max_history_len] left-padded item indexes of examples ``rows`` (default: all)."""
        rows = slice(None) if rows is None else rows
        length = self.max_history_len
        positions = self.ends[rows, None] - length + np.arange(length)  # [R, L]
        inside = positions >= self.firsts[rows, None]
        return np.where(inside, self.items[positions.clip(min=0)], 0)


NO_TRAINING_EXAMPLES = (
    "no training examples: every user has fewer than 4 positives (4 different items: an "
    "item a user repeats counts once)"
)


def training_examples(split: Split, max_history_len: int) -> Examples:
    """Every ``([i1..i_{t-1}], i_t)`` with ``t >= 2`` of each train sequence."""
    items, starts = train_items(split)
    pairs = np.diff(starts) - 1  # a user with n train items has n - 1 examples
    if not pairs.any():
        raise TwoTowerError(NO_TRAINING_EXAMPLES)
    users = np.repeat(np.arange(1, split.num_users + 1), pairs)
    firsts = np.repeat(starts[:-1], pairs)
    ends = firsts + 1 + np.arange(len(users)) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    return Examples(users, items[ends], items, firsts, ends, max_history_len)


@dataclass
class Windows:
    """The same pairs as :func:`training_examples`, grouped for causal sequence training.

    Row w is a left-padded window of a train sequence: ``inputs[w, j]`` is a
    history item and ``targets[w, j]`` the item that followed it, or 0 where
    position j carries no loss (padding, or a target an earlier window owns).
    """

    users: np.ndarray  # [W]
    inputs: np.ndarray  # [W, L]
    targets: np.ndarray  # [W, L]

    def __len__(self) -> int:
        return len(self.users)


def training_windows(split: Split, max_history_len: int) -> Windows:
    """Cut every train sequence into windows so each target ``t >= 2`` is trained once.

    The first window holds the first ``L`` pairs with their full histories.
    Each later window ends ``L // 2`` pairs further on and keeps the ``L``
    items before its end, so the targets it owns see between ``L // 2`` and
    ``L`` history items (the exact prefix examples would see ``L``).

    Pair p of a user is history ``train[:p + 1]`` and target ``train[p + 1]``.
    Window k of a user with P pairs ends after pair ``e_k = min(L + k * stride, P)``
    and owns the pairs after ``e_{k-1}``; so column j holds ``train[e_k - L + j]``
    and the target ``train[e_k - L + j + 1]``: whole windows are index arithmetic.
    """
    length, stride = max_history_len, max(1, max_history_len // 2)
    items, starts = train_items(split)
    pairs = np.diff(starts) - 1
    counts = np.where(pairs > 0, 1 + np.maximum(0, -(-(pairs - length) // stride)), 0)
    if not counts.any():
        raise TwoTowerError(NO_TRAINING_EXAMPLES)
    users = np.repeat(np.arange(1, split.num_users + 1), counts)  # [W]
    k = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)  # window of user
    user_pairs = pairs[users - 1]
    ends = np.minimum(length + k * stride, user_pairs)
    owned_from = np.where(k == 0, 0, np.minimum(length + (k - 1) * stride, user_pairs))
    columns = np.arange(length)
    relative = ends[:, None] - length + columns  # [W, L]: position within the user's items
    at = starts[users - 1, None] + relative
    inputs = np.where(relative >= 0, items[at.clip(min=0)], 0)
    owned = columns >= length - (ends - owned_from)[:, None]
    targets = np.where(owned, items[(at + 1).clip(min=0)], 0)
    return Windows(users, inputs, targets)
