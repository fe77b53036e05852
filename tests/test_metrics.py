"""Recall/MRR/NDCG from ranks, target ranking with masking and ties, and the popularity floor."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.config import TwoTowerConfig
from twotower.data.dataset import Dataset
from twotower.data.seen import EarlierItems
from twotower.data.split import make_split
from twotower.evaluation import evaluate_popularity, popularity_scores
from twotower.metrics import (
    NonFiniteScores,
    metric_ks,
    metrics_from_ranks,
    overlap_at_k,
    target_ranks,
)


def test_metrics_from_known_ranks():
    ranks = np.array([1, 2, 5, 10, 11, 50])
    metrics = metrics_from_ranks(ranks, (1, 10, 20))
    assert metrics["recall@1"] == pytest.approx(1 / 6)
    assert metrics["mrr@1"] == pytest.approx(1 / 6)
    assert metrics["ndcg@1"] == pytest.approx(1 / 6)

    assert metrics["recall@10"] == pytest.approx(4 / 6)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)
    ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    assert metrics["ndcg@10"] == pytest.approx(ndcg10)

    assert metrics["recall@20"] == pytest.approx(5 / 6)
    assert metrics["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 11) / 6)
    assert metrics["ndcg@20"] == pytest.approx(ndcg10 + 1 / math.log2(12) / 6)
    assert set(metrics) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (1, 10, 20)}


def test_a_miss_scores_zero_and_a_first_place_scores_one():
    assert metrics_from_ranks(np.array([11]), (10,)) == {
        "recall@10": 0.0,
        "mrr@10": 0.0,
        "ndcg@10": 0.0,
    }
    assert metrics_from_ranks(np.array([1, 1]), (10,)) == {
        "recall@10": 1.0,
        "mrr@10": 1.0,
        "ndcg@10": 1.0,
    }


def test_overlap_at_k_by_hand():
    reference = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    found = np.array([[4, 3, 9, 8], [6, 7, -1, -1], [-1, -1, -1, -1]])
    # row 1: 2 of 4; row 2: 1 of the 2 items there were (the -1 fillers are no items);
    # row 3: nothing to find, nothing missed
    assert overlap_at_k(found, reference) == pytest.approx((2 / 4 + 1 / 2 + 1.0) / 3)


def test_metric_ks_puts_the_headline_first_without_repeats():
    assert metric_ks(10) == (10, 20, 50)
    assert metric_ks(5) == (5, 10, 20, 50)  # the protocol's @10 keys whatever the headline
    assert metric_ks(20) == (20, 10, 50)


def test_target_ranks_counts_higher_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    no_mask = torch.zeros(2, 4, dtype=torch.bool)
    ranks = target_ranks(scores, torch.tensor([2, 3]), no_mask)
    assert ranks.tolist() == [3, 4]
    ranks = target_ranks(scores, torch.tensor([1, 0]), no_mask)
    assert ranks.tolist() == [1, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_target_ranks_refuses_non_finite_scores(bad):
    """A NaN compares false with everything: counted naively, the target would rank first."""
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.4, bad, 0.2]])
    with pytest.raises(NonFiniteScores, match="the scores of 1 of 2 users are not finite"):
        target_ranks(scores, torch.tensor([2, 0]), torch.zeros(2, 3, dtype=torch.bool))


def test_target_ranks_ignores_excluded_items():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    excluded = torch.tensor([[False, True, False, False], [True, True, False, True]])
    # user 0: 0.9 is seen, only 0.7 is ahead of 0.5; user 1: 0.4 and 0.3 are seen
    ranks = target_ranks(scores, torch.tensor([2, 2]), excluded)
    assert ranks.tolist() == [2, 1]
    # excluding items behind the target changes nothing
    behind = torch.tensor([[True, False, False, False], [False, False, False, True]])
    assert target_ranks(scores, torch.tensor([2, 2]), behind).tolist() == [3, 3]


def test_tied_items_with_lower_index_rank_ahead():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.5]])
    none = torch.zeros(1, 5, dtype=torch.bool)
    ranks = [target_ranks(scores, torch.tensor([t]), none).item() for t in range(5)]
    assert ranks == [1, 2, 3, 5, 4]
    excluded = torch.tensor([[True, False, False, False, False]])
    assert target_ranks(scores, torch.tensor([2]), excluded).tolist() == [2]


def test_a_constant_scorer_gets_no_credit_for_ties():
    scores = torch.zeros(3, 100)
    targets = torch.tensor([0, 49, 99])
    ranks = target_ranks(scores, targets, torch.zeros(3, 100, dtype=torch.bool))
    assert ranks.tolist() == [1, 50, 100]


def test_seen_items_are_the_items_before_the_target():
    earlier = EarlierItems([np.array([1, 3, 4]), np.array([2, 4])], num_items=4)
    mask = earlier.before(np.array([1, 2, 1]), np.array([4, 4, 1]))
    assert mask.tolist() == [
        [True, False, True, False],  # user 1 had 1 and 3 before 4
        [False, True, False, False],  # user 2 had 2 before 4
        [False, False, False, False],  # 1 is user 1's first item
    ]


@pytest.fixture()
def tiny_split():
    """Three users over items 1..5, in this time order:
    u1: 1 2 3 4   (valid target 3, test target 4)
    u2: 2 1 5     (valid target 1, test target 5)
    u3: 1 3 2     (valid target 3, test target 2)
    """
    sequences = {"1": [1, 2, 3, 4], "2": [2, 1, 5], "3": [1, 3, 2]}
    rows = [
        (user, str(item), position, 5.0)
        for user, items in sequences.items()
        for position, item in enumerate(items)
    ]
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    split = make_split(Dataset("tiny", frame), min_rating=4.0)
    assert split.item_ids == ["1", "2", "3", "4", "5"]
    assert [s.tolist() for s in split.sequences] == list(sequences.values())
    return split


def test_popularity_scores_count_the_conditioning_data(tiny_split):
    # valid conditions on train items: 1 (u1, u3), 2 (u1, u2)
    assert popularity_scores(tiny_split, "valid")[0].tolist() == [2, 2, 0, 0, 0]
    # test adds the valid items: 3 (u1), 1 (u2), 3 (u3)
    assert popularity_scores(tiny_split, "test")[0].tolist() == [3, 2, 2, 0, 0]
    assert popularity_scores(tiny_split, "test").shape == (3, 5)


def test_popularity_valid_with_seen_masked(tiny_split):
    metrics = evaluate_popularity(tiny_split, "valid", TwoTowerConfig(mask_seen=True, k_eval=1))
    # u1: target 3 (0), seen 1, 2 masked -> rank 1
    # u2: target 1 (2), seen 2 masked -> rank 1
    # u3: target 3 (0), seen 1 masked, item 2 (2) ahead -> rank 2
    assert metrics["recall@1"] == pytest.approx(2 / 3)
    assert metrics["mrr@1"] == pytest.approx(2 / 3)
    assert metrics["recall@20"] == pytest.approx(1.0)
    assert metrics["mrr@20"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert metrics["ndcg@20"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)


def test_popularity_valid_with_seen_kept(tiny_split):
    metrics = evaluate_popularity(tiny_split, "valid", TwoTowerConfig(mask_seen=False))
    # u1: items 1, 2 ahead -> 3; u2: item 1 first (tie with 2, lower index) -> 1; u3: 3
    assert metrics["recall@10"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert metrics["ndcg@10"] == pytest.approx((2 * 0.5 + 1) / 3)
    assert set(metrics) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (10, 20, 50)}


def test_popularity_test_with_seen_masked(tiny_split):
    metrics = evaluate_popularity(tiny_split, "test", TwoTowerConfig(mask_seen=True, k_eval=2))
    # counts [3, 2, 2, 0, 0]
    # u1: target 4, seen 1 2 3 -> rank 1
    # u2: target 5, seen 2 1; item 3 (2) ahead, item 4 (0, lower index) ahead -> rank 3
    # u3: target 2, seen 1 3 -> rank 1
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["mrr@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx(2 / 3)
    assert metrics["mrr@20"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert metrics["ndcg@20"] == pytest.approx((1 + 0.5 + 1) / 3)
