"""Synthetic interactions with the shapes of MovieLens-1M, -10M and -25M, generated from a seed.

What sizes a pipeline stage is the shape, not the content: how many users,
items and interactions, how unevenly they are spread, and how timestamps
bunch. So each workload copies those of its MovieLens release: every user
rates at least 20 items and the counts per user are long-tailed
(log-normal); item popularity is a power law, so a few items take a large
share and the tail is rarely rated; ratings come in sessions (bursts
minutes apart, days between bursts); ratings 1-5 put a bit over half of the
interactions at 4 or more, the implicit positives. Everything is drawn with
numpy in a few vectorised passes: ML-25M's 25 million rows take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MIN_PER_USER = 20  # as in every MovieLens release
POPULARITY_EXPONENT = 1.2  # item weight ~ 1 / (rank + 10)^1.2
DRAW_ROUNDS = 6
TABLE = 1 << 24  # slots of the popularity table
NUM_GENRES = 20
RATING_P = (0.05, 0.10, 0.30, 0.33, 0.22)  # ratings 1..5: 55% are >= 4
SESSION_P = 0.08  # chance that a rating starts a new session (~12 ratings per session)
SESSION_GAP_S = 14 * 86_400  # mean gap between sessions
RATING_GAP_S = 120  # mean gap within a session
START, END = 789_652_800, 1_574_327_700  # 1995-01-09 .. 2019-11-21, ML-25M's span


@dataclass(frozen=True)
class Shape:
    """A MovieLens release's size: its users, items and interactions."""

    name: str
    users: int
    items: int
    interactions: int


SHAPES = {
    shape.name: shape
    for shape in (
        Shape("ml-1m", 6_040, 3_706, 1_000_209),
        Shape("ml-10m", 69_878, 10_677, 10_000_054),
        Shape("ml-25m", 162_541, 59_047, 25_000_095),
    )
}


def per_user_counts(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: at least 20, log-normal above that, summing to the total."""
    extra = rng.lognormal(0.0, 1.3, shape.users)
    counts = MIN_PER_USER + np.floor(extra / extra.sum() * (shape.interactions - 20 * shape.users))
    short = shape.interactions - int(counts.sum())
    counts[rng.choice(shape.users, short, replace=False)] += 1
    return np.minimum(counts.astype(np.int64), shape.items // 2)


def popularity_table(num_items: int, rng: np.random.Generator) -> np.ndarray:
    """[TABLE] item numbers, each repeated in proportion to its popularity.

    A uniform index into it draws an item by popularity: one random read per
    draw instead of a binary search of the cumulative weights, which is most
    of the time at this size. Popularity is a power law over a random order
    of the items; each item's share is rounded to 1/TABLE (the rarest item
    of ML-25M's catalog still has about ten slots).
    """
    weights = 1.0 / (np.arange(num_items) + 10.0) ** POPULARITY_EXPONENT
    cdf = np.cumsum(weights[rng.permutation(num_items)])
    slots = (np.arange(TABLE) + 0.5) * (cdf[-1] / TABLE)
    return np.searchsorted(cdf, slots).astype(np.int64)


def interactions(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """user, item (integers from 1), timestamp (seconds), rating: one row per interaction.

    A user rates an item at most once: items are drawn by popularity with
    some to spare, repeats dropped, and each user's first draws kept.
    """
    rng = np.random.default_rng(seed)
    counts = per_user_counts(shape, rng)
    popular = popularity_table(shape.items, rng)
    done_users, done_items = [], []  # users whose items are complete
    users, items = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    wanted, factor, finished = counts, 1.25, np.zeros(shape.users, dtype=bool)
    for _ in range(DRAW_ROUNDS):  # heavy users repeat popular items: they draw again
        drawn = np.repeat(np.arange(shape.users), np.ceil(wanted * factor).astype(np.int64) + 4)
        drawn = drawn[wanted[drawn] > 0]
        users = np.concatenate([users, drawn])
        picks = popular[rng.integers(len(popular), size=len(drawn))]
        items = np.concatenate([items, picks])
        first = np.sort(np.unique(users * shape.items + items, return_index=True)[1])
        order = first[np.argsort(users[first], kind="stable")]  # by user, then draw order
        users, items = users[order], items[order]
        starts = np.searchsorted(users, np.arange(shape.users))
        kept = np.arange(len(users)) - starts[users] < counts[users]
        users, items = users[kept], items[kept]
        wanted = np.where(finished, 0, counts - np.bincount(users, minlength=shape.users))
        finished |= wanted == 0
        complete = finished[users]
        done_users.append(users[complete])
        done_items.append(items[complete])
        users, items, factor = users[~complete], items[~complete], 3.0
        if not len(users):
            break
    users, items = np.concatenate([*done_users, users]), np.concatenate([*done_items, items])
    order = np.argsort(users, kind="stable")  # each user's items stay in draw order
    users, items = users[order], items[order]
    position = np.arange(len(users)) - np.searchsorted(users, np.arange(shape.users))[users]

    # sessions: a burst of ratings minutes apart, then days until the next
    new_session = rng.random(len(users)) < SESSION_P
    scale = np.where(new_session, SESSION_GAP_S, RATING_GAP_S)
    gaps = rng.exponential(scale).astype(np.int64)
    gaps[position == 0] = 0
    elapsed = np.cumsum(gaps)
    first_rows = np.flatnonzero(position == 0)
    elapsed -= np.repeat(elapsed[first_rows], np.diff(np.append(first_rows, len(users))))
    span = np.maximum.reduceat(elapsed, first_rows)
    begin = START + (rng.random(len(first_rows)) * np.maximum(END - START - span, 1)).astype(
        np.int64
    )
    timestamps = begin[users] + elapsed
    ratings = rng.choice(np.arange(1.0, 6.0), len(users), p=RATING_P)
    return pd.DataFrame(
        {"user": users + 1, "item": items + 1, "timestamp": timestamps, "rating": ratings}
    )


def items(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """item, title, genres (one to three of 20, separated by |), as MovieLens' movies.csv."""
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(NUM_GENRES, size=(shape.items, 3))
    how_many = rng.integers(1, 4, shape.items)
    genres = [
        "|".join(sorted({f"genre{g}" for g in row[:n]}))
        for row, n in zip(picks.tolist(), how_many.tolist(), strict=True)
    ]
    ids = np.arange(1, shape.items + 1)
    return pd.DataFrame({"item": ids, "title": [f"Item {i}" for i in ids], "genres": genres})


def write(shape: Shape, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The workload as Parquet files in ``folder``: (interactions, items)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{shape.name}-interactions.parquet", folder / f"{shape.name}-items.parquet"
    interactions(shape, seed).to_parquet(paths[0], index=False)
    items(shape, seed).to_parquet(paths[1], index=False)
    return paths
