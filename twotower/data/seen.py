"""Which items a user had before a given one: the seen items evaluation and losses mask.

PROTOCOL.md removes every earlier positive of a user from the ranking of
their next item. The same set, for a training target, is what a loss may
leave out of that target's negatives: an item the user already has can never
be recommended to them, so pushing it down teaches the model nothing it is
scored on.
"""

from __future__ import annotations

import numpy as np
import torch


class EarlierItems:
    """Every user's ordered items, looked up by (user, item).

    Held as flat arrays (one row per interaction), so memory grows with the
    interactions, not with users x items.
    """

    def __init__(self, sequences: list[np.ndarray], num_items: int):
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        self.num_items = num_items
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # user u at starts[u - 1]
        self.items = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
        users = np.repeat(np.arange(1, len(sequences) + 1), lengths)
        keys = users * (num_items + 1) + self.items
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.positions = (np.arange(len(keys)) - self.starts[users - 1])[order]

    def position(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Index of ``items[m]`` in user ``users[m]``'s sequence (how many items came before)."""
        keys = np.asarray(users) * (self.num_items + 1) + np.asarray(items)
        found = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        if len(keys) and not np.array_equal(self.keys[found], keys):
            raise ValueError("an item is not in its user's sequence")
        return self.positions[found]

    def before(self, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        """[M, N] bool: column j is True where item j + 1 came before ``items[m]`` (user
        ``users[m]``)."""
        counts = self.position(users, items)
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(counts)), counts)
        # the flat index of each earlier item: its row's start plus its offset within the row
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.repeat(self.starts[np.asarray(users) - 1], counts) + offsets
        mask = torch.zeros(len(counts), self.num_items, dtype=torch.bool)
        mask[torch.as_tensor(rows), torch.as_tensor(self.items[flat] - 1)] = True
        return mask
