"""The built-in losses on hand-computed examples.

Every expected value below is worked out in the comments from 2-3 row
tensors with temperature 1 (unless stated), written as sums of
``log(1 + sum exp(other - positive))`` so each term can be checked by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from twotower import plugins
from twotower.config import TwoTowerConfig
from twotower.losses import FullSoftmax, InBatchSoftmax, LogQSoftmax, MixedNegatives, TrainBatch

# a 3-item catalog; row 0 of the table is the padding item
CATALOG = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])


def encode_items(ids: torch.Tensor) -> torch.Tensor:
    return CATALOG[ids]


def batch(targets: list[int], earlier: list[list[int]] | None = None) -> TrainBatch:
    """Rows with these targets; ``earlier[i]`` lists the items row i's user had before."""
    size = len(targets)
    history = torch.ones(size, 1, dtype=torch.long)
    seen = torch.zeros(size, 3, dtype=torch.bool)
    for row, items in enumerate(earlier or []):
        seen[row, torch.tensor(items, dtype=torch.long) - 1] = True
    return TrainBatch(
        torch.arange(1, size + 1),
        history,
        history != 0,
        torch.tensor(targets),
        encode_items,
        3,
        lambda: seen,
    )


def make(cls, counts=(0.0, 1.0, 1.0, 1.0), **config):
    return cls(TwoTowerConfig(**config), torch.tensor(counts))


def softplus_sum(*differences: float) -> float:
    """``log(1 + sum exp(d))``: cross-entropy of a row whose others exceed the label by ``d``."""
    return math.log(1.0 + sum(math.exp(d) for d in differences))


def test_built_in_losses_are_registered():
    assert plugins.losses().get("inbatch-softmax") is InBatchSoftmax
    assert plugins.losses().get("logq-softmax") is LogQSoftmax
    assert plugins.losses().get("full-softmax") is FullSoftmax
    assert plugins.losses().get("mixed-negatives") is MixedNegatives


# --- inbatch-softmax -----------------------------------------------------------------


def test_inbatch_softmax_is_the_mean_of_both_directions():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # S = U Vᵀ = [[1, 0.6], [0, 0.8]]
    # user -> item rows:  [1, 0.6] label 0 -> log(1 + e^-0.4) = 0.513015
    #                     [0, 0.8] label 1 -> log(1 + e^-0.8) = 0.371101
    # item -> user (Sᵀ):  [1, 0]   label 0 -> log(1 + e^-1)   = 0.313262
    #                     [0.6, 0.8] label 1 -> log(1 + e^-0.2) = 0.598139
    # loss = 0.5 * (mean of the first two + mean of the last two) = 0.448879
    expected = 0.25 * (
        softplus_sum(-0.4) + softplus_sum(-0.8) + softplus_sum(-1.0) + softplus_sum(-0.2)
    )
    assert expected == pytest.approx(0.448879, abs=1e-6)
    loss = make(InBatchSoftmax)(users, items, torch.tensor(1.0), batch([1, 3]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_inbatch_softmax_is_symmetric_in_users_and_items():
    generator = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(3, 2, generator=generator), dim=-1)
    items = F.normalize(torch.randn(3, 2, generator=generator), dim=-1)
    loss = make(InBatchSoftmax)
    forward = loss(users, items, torch.tensor(0.5), batch([1, 2, 3]))
    swapped = loss(items, users, torch.tensor(0.5), batch([1, 2, 3]))
    assert forward.item() == pytest.approx(swapped.item(), abs=1e-6)
    # the temperature divides the scores
    halved = loss(2 * users, items, torch.tensor(1.0), batch([1, 2, 3]))
    assert forward.item() == pytest.approx(halved.item(), abs=1e-6)


def test_accidental_hits_are_negatives_for_neither_row():
    # rows 0 and 1 share positive item 1 (vector [1, 0]); row 2's is item 2 ([0, 1])
    users = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    items = encode_items(torch.tensor([1, 1, 2]))
    # S = [[1, 1, 0], [0.8, 0.8, 0.6], [0, 0, 1]]; (0, 1) and (1, 0) are masked
    # user -> item: [1, -, 0]      label 0 -> log(1 + e^-1)            = 0.313262
    #               [-, 0.8, 0.6]  label 1 -> log(1 + e^-0.2)          = 0.598139
    #               [0, 0, 1]      label 2 -> log(1 + 2 e^-1)          = 0.551445
    # item -> user: [1, -, 0]      label 0 -> log(1 + e^-1)            = 0.313262
    #               [-, 0.8, 0]    label 1 -> log(1 + e^-0.8)          = 0.371101
    #               [0, 0.6, 1]    label 2 -> log(1 + e^-1 + e^-0.4)   = 0.712067
    # loss = 0.5 * (1.462845 / 3 + 1.396429 / 3) = 0.476546
    masked = 0.5 * (
        (softplus_sum(-1) + softplus_sum(-0.2) + softplus_sum(-1, -1)) / 3
        + (softplus_sum(-1) + softplus_sum(-0.8) + softplus_sum(-1, -0.4)) / 3
    )
    assert masked == pytest.approx(0.476546, abs=1e-6)
    # unmasked, rows 0 and 1 also count their twin as a negative:
    # user -> item: [1, 1, 0] label 0 -> log(1 + e^0 + e^-1), [0.8, 0.8, 0.6] label 1
    #   -> log(1 + e^0 + e^-0.2); item -> user: [1, 0.8, 0] label 0 -> log(1 + e^-0.2
    #   + e^-1), [1, 0.8, 0] label 1 -> log(1 + e^0.2 + e^-0.8); row 2 as before
    unmasked = 0.5 * (
        (softplus_sum(0, -1) + softplus_sum(0, -0.2) + softplus_sum(-1, -1)) / 3
        + (softplus_sum(-0.2, -1) + softplus_sum(0.2, -0.8) + softplus_sum(-1, -0.4)) / 3
    )
    assert unmasked == pytest.approx(0.821083, abs=1e-6)
    targets = batch([1, 1, 2])
    loss = make(InBatchSoftmax, mask_accidental_hits=True)(users, items, torch.tensor(1.0), targets)
    assert loss.item() == pytest.approx(masked, abs=1e-6)
    loss = make(InBatchSoftmax, mask_accidental_hits=False)(
        users, items, torch.tensor(1.0), targets
    )
    assert loss.item() == pytest.approx(unmasked, abs=1e-6)


# --- logq-softmax --------------------------------------------------------------------

# item 1 is popular (q = 0.9), item 2 rare (q = 0.1)
SKEWED = (0.0, 9.0, 1.0, 0.0)


def test_logq_subtracts_log_frequency_so_popular_items_go_down():
    # both users sit on item 1; targets are item 1 (row 0) and item 2 (row 1)
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = encode_items(torch.tensor([1, 2]))
    # S = [[1, 0], [1, 0]]. Corrected logits s(u, j) - log q(j):
    #   column item 1: + 0.105361 (-log 0.9), column item 2: + 2.302585 (-log 0.1)
    # the popular item's logit goes DOWN relative to the rare one's by log 9 = 2.197225
    # user -> item: [1.105361, 2.302585] label 0 -> log(1 + e^(1.197224)) = 1.461150
    #               [1.105361, 2.302585] label 1 -> log(1 + e^(-1.197224)) = 0.263926
    # item -> user (uncorrected Sᵀ = [[1, 1], [0, 0]]): log 2 each        = 0.693147
    # loss = 0.5 * ((1.461150 + 0.263926) / 2 + 0.693147) = 0.777843
    shift = math.log(9.0) - 1.0
    expected = 0.5 * ((softplus_sum(shift) + softplus_sum(-shift)) / 2 + math.log(2.0))
    assert expected == pytest.approx(0.777843, abs=1e-6)
    loss = make(LogQSoftmax, counts=SKEWED)(users, items, torch.tensor(1.0), batch([1, 2]))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the inverted correction, s + log q, would give a very different value:
    # [0.894639, -2.302585] -> log(1 + e^-3.197224) = 0.040062 and log(1 + e^3.197224)
    # = 3.237287 for the rows, 1.165911 in all instead of 0.777843
    inverted = 0.5 * (
        (softplus_sum(-math.log(9.0) - 1.0) + softplus_sum(math.log(9.0) + 1.0)) / 2 + math.log(2.0)
    )
    assert inverted == pytest.approx(1.165911, abs=1e-6)
    assert abs(loss.item() - inverted) > 0.3


def test_logq_with_uniform_frequencies_is_inbatch_softmax():
    generator = torch.Generator().manual_seed(1)
    users = F.normalize(torch.randn(3, 2, generator=generator), dim=-1)
    items = encode_items(torch.tensor([1, 2, 3]))
    args = (users, items, torch.tensor(0.2), batch([1, 2, 3]))
    uniform = (0.0, 5.0, 5.0, 5.0)
    assert make(LogQSoftmax, counts=uniform)(*args).item() == pytest.approx(
        make(InBatchSoftmax, counts=uniform)(*args).item(), abs=1e-6
    )


# --- full-softmax --------------------------------------------------------------------


def test_full_softmax_is_cross_entropy_over_the_catalog():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = batch([1, 3])
    temperature = torch.tensor(0.5)
    # scores = U Cᵀ / 0.5 with C = items 1..3 = [[1, 0], [0, 1], [0.6, 0.8]]
    # row 0: [2, 0, 1.2]   label item 1 -> log(1 + e^-2 + e^-0.8)   = 0.460373
    # row 1: [0, 2, 1.6]   label item 3 -> log(1 + e^-1.6 + e^0.4)  = 0.990924
    # mean = 0.725648
    expected = (softplus_sum(-2, -0.8) + softplus_sum(-1.6, 0.4)) / 2
    assert expected == pytest.approx(0.725648, abs=1e-6)
    loss = make(FullSoftmax)(users, encode_items(targets.target_items), temperature, targets)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the same thing as a manual log-softmax over the whole catalog
    log_p = torch.log_softmax(users @ CATALOG[1:].T / temperature, dim=1)
    manual = -log_p[torch.arange(2), targets.target_items - 1].mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-6)


# --- mixed-negatives -----------------------------------------------------------------


def test_mixed_negatives_masks_sampled_positives():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = batch([1, 2])
    loss_fn = make(MixedNegatives, num_negatives=4)
    torch.manual_seed(1)
    assert torch.randint(1, 4, (4,)).tolist() == [2, 3, 1, 3]  # what the loss will sample
    # candidates: in-batch items 1, 2, then sampled 2, 3, 1, 3
    # row 0 (u = [1, 0], positive item 1): [1, 0 | 0, 0.6, 1, 0.6]; sampled item 1 masked
    #   -> log(1 + e^-1 + e^-1 + e^-0.4 + e^-0.4)          = 1.123760
    # row 1 (u = [0, 1], positive item 2): [0, 1 | 1, 0.8, 0, 0.8]; sampled item 2 masked
    #   -> log(1 + e^-1 + e^-0.2 + e^-1 + e^-0.2)          = 1.215868
    # mean = 1.169814
    expected = (softplus_sum(-1, -1, -0.4, -0.4) + softplus_sum(-1, -0.2, -1, -0.2)) / 2
    assert expected == pytest.approx(1.169814, abs=1e-6)
    torch.manual_seed(1)
    loss = loss_fn(users, encode_items(targets.target_items), torch.tensor(1.0), targets)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # unmasked, each row's copy of its own positive would tie with the label (e^0 terms)
    unmasked = (softplus_sum(-1, -1, -0.4, 0, -0.4) + softplus_sum(-1, 0, -0.2, -1, -0.2)) / 2
    assert loss.item() < unmasked - 0.1


def test_mixed_negatives_masks_in_batch_accidental_hits():
    # both rows have item 1 as positive; with no sampled negative but item 3
    users = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    targets = batch([1, 1])
    loss_fn = make(MixedNegatives, num_negatives=1, mask_accidental_hits=True)
    torch.manual_seed(0)
    sampled = torch.randint(1, 4, (1,)).tolist()
    assert sampled == [3]
    # row 0: [1, - | 0.6]   -> log(1 + e^-0.4)           = 0.513015
    # row 1: [-, 0.6 | 1.0] -> log(1 + e^0.4)            = 0.913015
    expected = (softplus_sum(-0.4) + softplus_sum(0.4)) / 2
    torch.manual_seed(0)
    loss = loss_fn(users, encode_items(targets.target_items), torch.tensor(1.0), targets)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


# --- seen items are not negatives (loss_mask_seen) ----------------------------------


def test_full_softmax_leaves_each_rows_earlier_items_out():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = batch([1, 3], earlier=[[3], [2]])  # row 0's user had item 3, row 1's item 2
    # scores / 0.5 as above: row 0 [2, 0, 1.2], row 1 [0, 2, 1.6]
    # row 0 without item 3: [2, 0, -]  label item 1 -> log(1 + e^-2)   = 0.126928
    # row 1 without item 2: [0, -, 1.6] label item 3 -> log(1 + e^-1.6) = 0.183901
    expected = (softplus_sum(-2) + softplus_sum(-1.6)) / 2
    assert expected == pytest.approx(0.155414, abs=1e-6)
    args = (users, encode_items(targets.target_items), torch.tensor(0.5), targets)
    assert make(FullSoftmax)(*args).item() == pytest.approx(expected, abs=1e-6)
    # with the option off the seen items are negatives again: the value of the test above
    assert make(FullSoftmax, loss_mask_seen=False)(*args).item() == pytest.approx(
        0.725648, abs=1e-6
    )


def test_inbatch_softmax_leaves_each_rows_earlier_items_out():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    targets = batch([1, 3], earlier=[[3], []])  # row 0's user had row 1's target before
    # S = [[1, 0.6], [0, 0.8]] with (0, 1) masked in both directions
    # user -> item: [1, -] label 0 -> 0;  [0, 0.8] label 1 -> log(1 + e^-0.8) = 0.371101
    # item -> user: [1, 0] label 0 -> log(1 + e^-1) = 0.313262;  [-, 0.8] label 1 -> 0
    expected = 0.5 * ((softplus_sum(-0.8)) / 2 + (softplus_sum(-1.0)) / 2)
    assert expected == pytest.approx(0.171091, abs=1e-6)
    loss = make(InBatchSoftmax)(users, items, torch.tensor(1.0), targets)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    unmasked = make(InBatchSoftmax, loss_mask_seen=False)(users, items, torch.tensor(1.0), targets)
    assert unmasked.item() == pytest.approx(0.448879, abs=1e-6)  # the first test's value


def test_mixed_negatives_leaves_seen_samples_out():
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = batch([1, 2], earlier=[[3], []])  # row 0's user had item 3 before
    torch.manual_seed(1)  # samples 2, 3, 1, 3 (see above)
    # row 0: [1, 0 | 0, -, -, -]: item 1 is its positive, item 3 was seen
    #   -> log(1 + e^-1 + e^-1)                              = 0.551445
    # row 1: as in the test above                           = 1.215868
    expected = (softplus_sum(-1, -1) + softplus_sum(-1, -0.2, -1, -0.2)) / 2
    loss = make(MixedNegatives, num_negatives=4)(
        users, encode_items(targets.target_items), torch.tensor(1.0), targets
    )
    assert loss.item() == pytest.approx(expected, abs=1e-6)
