"""What a recommendation is, shared by the PyTorch path and the torch-free runtime."""

from __future__ import annotations

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


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, not {k!r}")
    return k


def unknown_user(user_id: str, known: list[str]) -> TwoTowerError:
    sample = ", ".join(known[:3])
    return TwoTowerError(f"unknown user id {user_id!r} ({len(known)} known users, e.g. {sample})")
