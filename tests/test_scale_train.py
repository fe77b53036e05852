"""The scale-train suite: its synthetic workloads, its stage worker and its growth figures."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_config

from twotower.bench import report, scale_train, workloads

TINY = workloads.Shape("tiny", users=150, items=1_000, interactions=9_000)


def test_a_workload_has_the_shape_of_a_movielens_release():
    frame = workloads.interactions(TINY, seed=3)
    assert frame.equals(workloads.interactions(TINY, seed=3))  # from the seed alone
    per_user = frame.groupby("user").size()
    assert per_user.min() >= workloads.MIN_PER_USER and len(per_user) == TINY.users
    assert len(frame) >= 0.9 * TINY.interactions  # what repeats took away, mostly drawn again
    assert not frame.duplicated(["user", "item"]).any()  # an item once per user
    assert (frame.groupby("user")["timestamp"].diff().dropna() >= 0).all()  # in time order
    popularity = frame.groupby("item").size().sort_values(ascending=False)
    assert popularity.iloc[: TINY.items // 10].sum() > 0.3 * len(frame)  # a long tail
    assert 0.5 < (frame["rating"] >= 4).mean() < 0.6
    gaps = frame.groupby("user")["timestamp"].diff().dropna()
    assert (gaps < 3600).mean() > 0.8 and (gaps > 86_400).mean() > 0.03  # sessions


def test_the_stage_worker_measures_every_stage_of_a_fit(tmp_path):
    paths = workloads.write(TINY, tmp_path)
    settings = tiny_config(tmp_path, max_history_len=8).to_dict()
    result = scale_train.stages({"settings": settings, "paths": list(map(str, paths)), "steps": 2})
    frame = workloads.interactions(TINY)
    assert result["counts"] == {
        "interactions": len(frame), "users": 150, "items": frame["item"].nunique()
    }  # fmt: skip
    for stage in scale_train.STAGES:
        record = result["stages"][stage]
        assert record["seconds"] > 0 and record["peak_mib"] >= record["added_mib"] >= 0
    assert result["training"]["steps"] == 2 and result["training"]["examples"] > 0
    assert result["shape"]["training_pairs"] == result["shape"]["positives"] - 3 * 150
    assert 0 <= result["test_recall@10"] <= 1


def test_growth_is_the_exponent_of_seconds_against_size():
    sizes = [("a", 10, 2, 5, 1), ("b", 40, 4, 10, 4), ("c", 80, 8, 10, 16)]
    rows = [
        {"workload": name, "stage": "split", "interactions": n, "users": u, "items": i}
        | {"seconds": seconds, "peak_mib": 1.0, "added_mib": 0.5}
        for name, n, u, i, seconds in sizes
    ]
    first, second = scale_train.growth(rows)
    assert (first["from"], first["to"]) == ("a", "b")
    assert first["exponent"] == pytest.approx(1.0) and second["exponent"] == pytest.approx(2.0)
    assert first["exponent_users_x_items"] == pytest.approx(np.log(4) / np.log(4))
    assert first["exponent_items"] == pytest.approx(2.0) and second["exponent_items"] is None
    fake = {
        "machine": {"platform": "p", "cpu_count": 2, "memory_gib": 1}, "versions": {},
        "threads": {"torch_per_rank": 1}, "steps": 5, "warmup_steps": 3, "rows": rows,
        "workloads": [], "training": [], "growth": [first, second],
    }  # fmt: skip
    text = report.markdown(fake, "scale-train")
    assert "| split | a | b | 4.0 | 4.0 | 1.00 | 2.00 | 1.00 |" in text
    assert "| split | b | c | 2.0 | 4.0 | 2.00 | - | 2.00 |" in text
    assert "| c | 80 | 8 | 10 | split |" in text
