"""What a recommendation is, shared by the PyTorch path and the torch-free runtime."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import TwoTowerError


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    title: str
    genres: list[str]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ranked(
    rows: Sequence[int], scores: Sequence[float], item_ids: list[str], items: list[dict[str, Any]]
) -> list[Recommendation]:
    """One query's search result (catalog rows, best first; -1 = no item) as recommendations."""
    return [
        Recommendation(
            rank=rank,
            item_id=item_ids[row],
            title=items[row]["title"],
            genres=items[row]["genres"],
            score=float(score),
        )
        for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
        if row >= 0
    ]


def check_k(k: int, catalog_size: int) -> int:
    """``k`` as an int, at most the catalog size: a huge ``k`` asks for every item, no more."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, not {k!r}")
    return min(int(k), catalog_size)


def id_list(ids: Any, what: str) -> list[str]:
    """Raw ids as strings; a single string is refused, not read as a list of characters."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise TwoTowerError(f"{what} must be a list of ids, not {type(ids).__name__} {ids!r}")
    return [str(i) for i in ids]


def unknown_user(user_id: str, known: list[str]) -> TwoTowerError:
    sample = ", ".join(known[:3])
    return TwoTowerError(f"unknown user id {user_id!r} ({len(known)} known users, e.g. {sample})")


def require_finite(vectors: np.ndarray) -> np.ndarray:
    """A non-finite user vector would rank nothing (NaN compares false): refuse it instead."""
    if not np.isfinite(vectors).all():
        raise TwoTowerError("the user tower gave a non-finite vector (NaN or infinite)")
    return vectors
