"""What a recommendation is, shared by the PyTorch path and the torch-free runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, not {k!r}")
    return k


def unknown_user(user_id: str, known: list[str]) -> TwoTowerError:
    sample = ", ".join(known[:3])
    return TwoTowerError(f"unknown user id {user_id!r} ({len(known)} known users, e.g. {sample})")
