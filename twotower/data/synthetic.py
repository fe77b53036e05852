"""A synthetic dataset with learnable sequential structure, for tests and demos.

Items fall into topics (one genre each); each user walks between topics with
a bias to stay, so the next item is predictable from the recent history. It
needs no download and is generated from a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..schema import at_least, option, parse
from .dataset import Dataset


@dataclass
class SyntheticOptions:
    """The ``synthetic_*`` settings (``--set synthetic_num_users=500``)."""

    num_users: int = option(200, at_least(1))
    num_items: int = option(120, at_least(2))
    num_topics: int = option(6, at_least(1))
    length: int = option(20, at_least(3))  # positives per user (at most num_items)
    seed: int = option(0, at_least(0))


def generate(
    num_users: int = SyntheticOptions.num_users,
    num_items: int = SyntheticOptions.num_items,
    num_topics: int = SyntheticOptions.num_topics,
    length: int = SyntheticOptions.length,
    seed: int = SyntheticOptions.seed,
) -> Dataset:
    rng = np.random.default_rng(seed)
    topic_of = np.arange(num_items) % num_topics
    rows = []
    for user in range(1, num_users + 1):
        topic = rng.integers(num_topics)
        seen: set[int] = set()
        time = int(rng.integers(1_000_000))
        while len(seen) < min(length, num_items):
            if rng.random() < 0.2:
                topic = (topic + 1) % num_topics  # drift to the neighbouring topic
            choices = [i for i in np.flatnonzero(topic_of == topic) if i not in seen]
            if not choices:
                topic = rng.integers(num_topics)
                continue
            item = int(rng.choice(choices[: max(2, len(choices) // 2)]))  # favour low ids
            seen.add(item)
            time += int(rng.integers(1, 1000))
            rating = float(rng.choice([3.0, 4.0, 5.0], p=[0.1, 0.4, 0.5]))
            rows.append((str(user), f"i{item + 1}", time, rating))
    interactions = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    interactions["user"] = interactions["user"].astype(str)
    interactions["item"] = interactions["item"].astype(str)
    items = pd.DataFrame(
        {
            "item": [f"i{i + 1}" for i in range(num_items)],
            "title": [f"Item {i + 1}" for i in range(num_items)],
            "genres": [[f"topic{topic_of[i]}"] for i in range(num_items)],
        }
    )
    return Dataset("synthetic", interactions, items)


def load(config) -> Dataset:
    """The ``synthetic`` dataset plugin; sizes come from ``extra["synthetic_*"]``."""
    options = {
        k[len("synthetic_") :]: v for k, v in config.extra.items() if k.startswith("synthetic_")
    }
    owner, spell = "dataset 'synthetic'", "synthetic_{}".format
    return generate(**asdict(parse(SyntheticOptions, options, spell=spell, owner=owner)))


load.option_schema = SyntheticOptions  # what twotower checks `synthetic_*` settings against
