"""Implicit filter, vocabularies and the per-user temporal split (PROTOCOL.md, "Split").

Item and user indexes start at 1: index 0 is the padding item in histories
and the "unknown user" of cold-start queries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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

    def fingerprint(self) -> str:
        """sha256 of what evaluation depends on: the users, the items and every user's order."""
        content = [self.user_ids, self.item_ids, [s.tolist() for s in self.sequences]]
        return hashlib.sha256(json.dumps(content).encode("utf-8")).hexdigest()


def item_sort_key(items: pd.Series) -> pd.Series:
    """Ids compare as integers when every id is an integer, else as strings."""
    numeric = pd.to_numeric(items, errors="coerce")
    if numeric.notna().all() and (numeric % 1 == 0).all():
        return numeric.astype("int64")
    return items


def implicit_positives(interactions: pd.DataFrame, min_rating: float) -> pd.DataFrame:
    """Keep ``rating >= min_rating`` (every row when there is no rating), earliest per user-item.

    A repeated positive would be both history and target, and masking seen
    items would make it unreachable; only its first occurrence counts.
    """
    positives = interactions
    if "rating" in interactions.columns:
        positives = interactions[interactions["rating"] >= min_rating]
    earliest = positives.sort_values("timestamp", kind="stable")
    return earliest.drop_duplicates(["user", "item"], keep="first").sort_index()


def make_split(dataset: Dataset, min_rating: float, min_user_positives: int = 3) -> Split:
    """Apply PROTOCOL.md steps 1-4 to a dataset."""
    if min_user_positives < 3:
        raise TwoTowerError("min_user_positives must be at least 3 (train, valid and test)")
    positives = implicit_positives(dataset.interactions, min_rating)
    counts = positives.groupby("user").size()
    kept = positives[positives["user"].isin(counts.index[counts >= min_user_positives])]
    if kept.empty:
        raise TwoTowerError(
            f"nothing left after filtering {dataset.name}: no user has "
            f"{min_user_positives}+ positives with rating >= {min_rating}"
        )
    kept = kept.assign(_item_key=item_sort_key(kept["item"]))
    kept = kept.sort_values(["user", "timestamp", "_item_key"], kind="stable")

    item_keys = kept[["item", "_item_key"]].drop_duplicates("item").sort_values("_item_key")
    item_ids = item_keys["item"].tolist()
    user_ids = sorted(kept["user"].unique(), key=_user_key(kept["user"]))
    item_index = pd.Series(np.arange(1, len(item_ids) + 1), index=item_ids)

    kept = kept.assign(_item=item_index.loc[kept["item"]].to_numpy())
    grouped = dict(tuple(kept.groupby("user", sort=False)["_item"]))
    sequences = [grouped[user].to_numpy(dtype=np.int64) for user in user_ids]

    genre_names, item_genres, titles, genres = _item_features(dataset.items, item_ids)
    return Split(user_ids, item_ids, sequences, genre_names, item_genres, titles, genres)


def _user_key(users: pd.Series):
    keys = item_sort_key(pd.Series(users.unique()))
    mapping = dict(zip(users.unique(), keys, strict=True))
    return lambda user: mapping[user]


def _item_features(items: pd.DataFrame | None, item_ids: list[str]):
    """Multi-hot genres, titles and genre lists aligned with item indexes."""
    if items is None:
        no_genres = np.zeros((len(item_ids) + 1, 0), dtype=np.float32)
        return [], no_genres, [""] * len(item_ids), [[] for _ in item_ids]
    by_id = items.set_index("item")
    titles = [str(by_id["title"].get(i, "")) for i in item_ids]
    genres = [list(by_id["genres"].get(i, [])) for i in item_ids]
    genre_names = sorted({g for gs in genres for g in gs})
    column = {g: j for j, g in enumerate(genre_names)}
    multi_hot = np.zeros((len(item_ids) + 1, len(genre_names)), dtype=np.float32)
    for row, gs in enumerate(genres, start=1):
        for g in gs:
            multi_hot[row, column[g]] = 1.0
    return genre_names, multi_hot, titles, genres


@dataclass
class Examples:
    """Prefix/next-item training examples (PROTOCOL.md step 5), left-padded."""

    users: np.ndarray  # [M] user index
    histories: np.ndarray  # [M, max_history_len] item indexes, left-padded
    targets: np.ndarray  # [M] item index

    def __len__(self) -> int:
        return len(self.targets)


def training_examples(split: Split, max_history_len: int) -> Examples:
    """Every ``([i1..i_{t-1}], i_t)`` with ``t >= 2`` of each train sequence."""
    users, histories, targets = [], [], []
    for user in range(1, split.num_users + 1):
        train = split.train(user)
        for t in range(1, len(train)):
            users.append(user)
            histories.append(train[max(0, t - max_history_len) : t])
            targets.append(train[t])
    if not targets:
        raise TwoTowerError("no training examples: every user has fewer than 4 positives")
    ids = np.zeros((len(histories), max_history_len), dtype=np.int64)
    for row, history in enumerate(histories):
        ids[row, max_history_len - len(history) :] = history
    return Examples(np.array(users, dtype=np.int64), ids, np.array(targets, dtype=np.int64))


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
    """
    length, stride = max_history_len, max(1, max_history_len // 2)
    users, inputs, targets = [], [], []
    for user in range(1, split.num_users + 1):
        train = split.train(user)
        pairs = len(train) - 1  # pair p: history ends at train[p], target train[p + 1]
        owned_from, end = 0, min(length, pairs)
        while owned_from < pairs:
            start = max(0, end - length)
            row_inputs = np.zeros(length, dtype=np.int64)
            row_targets = np.zeros(length, dtype=np.int64)
            width = end - start
            row_inputs[length - width :] = train[start:end]
            owned = slice(length - (end - owned_from), length)
            row_targets[owned] = train[owned_from + 1 : end + 1]
            users.append(user)
            inputs.append(row_inputs)
            targets.append(row_targets)
            owned_from, end = end, min(end + stride, pairs)
    if not users:
        raise TwoTowerError("no training examples: every user has fewer than 4 positives")
    return Windows(np.array(users, dtype=np.int64), np.stack(inputs), np.stack(targets))
