"""Left padding of histories (numpy only: the serving runtime uses it too)."""

from __future__ import annotations

import numpy as np


def pad_left(sequences: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad (and truncate to the last ``max_len``) into ids[B, L] and mask[B, L].

    Left padding keeps the most recent item in the last column for every row.
    ``L`` is the longest kept history (at least 1), so a batch of short
    histories stays narrow.
    """
    width = max(1, min(max_len, max((len(s) for s in sequences), default=0)))
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = sequence[-max_len:] if max_len > 0 else sequence[:0]
        if len(tail):
            ids[row, width - len(tail) :] = tail
    return ids, ids != 0
