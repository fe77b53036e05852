"""A synthetic dataset with learnable sequential structure, for tests and demos.

Items fall into topics (one genre each); each user walks between topics with
a bias to stay, so the next item is predictable from the recent history. It
needs no download and is generated from a seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .dataset import Dataset


def generate(
    num_users: int = 200,
    num_items: int = 120,
    num_topics: int = 6,
    length: int = 20,
    seed: int = 0,
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
    return generate(**options)
