"""The implicit filter, the per-user temporal split and the training examples (PROTOCOL.md)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from twotower.data.dataset import Dataset
from twotower.data.padding import pad_left
from twotower.data.split import make_split, training_examples, training_windows
from twotower.data.synthetic import generate
from twotower.errors import TwoTowerError


def dataset(rows, items=None, name="toy") -> Dataset:
    """rows: (user, item, timestamp, rating) with ids as strings."""
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    frame = frame.astype({"user": str, "item": str, "timestamp": "int64", "rating": "float64"})
    return Dataset(name, frame, items)


def raw_sequences(split) -> dict[str, list[str]]:
    return {
        user: [split.item_ids[i - 1] for i in sequence]
        for user, sequence in zip(split.user_ids, split.sequences, strict=True)
    }


def sequence_dataset(sequences: dict[str, list[str]]) -> Dataset:
    """Each user's items in the given order, at increasing timestamps, all rated 5."""
    rows = [
        (user, item, 100 * position, 5.0)
        for user, items in sequences.items()
        for position, item in enumerate(items)
    ]
    return dataset(rows)


# --- ordering ------------------------------------------------------------------------


def test_timestamp_ties_are_broken_by_numeric_item_id():
    rows = [
        ("1", "10", 50, 5),
        ("1", "9", 50, 5),
        ("1", "100", 50, 5),
        ("1", "2", 40, 5),
        ("1", "1", 60, 5),
    ]
    split = make_split(dataset(rows), min_rating=4.0)
    # "9" < "10" < "100" as numbers (as text "10" < "100" < "9" would win)
    assert raw_sequences(split) == {"1": ["2", "9", "10", "100", "1"]}
    assert split.item_ids == ["1", "2", "9", "10", "100"]


@pytest.mark.parametrize("big", ["99999999999999999999", "9223372036854775808"])
def test_integer_ids_past_int64_keep_their_order(big):
    """int64 would wrap them below the small ids; float64 would round two into one."""
    rows = [("1", big, 5, 5), ("1", "5", 5, 5), ("1", "3", 1, 5), ("1", "4", 2, 5)]
    rows += [("1", str(int(big) + 1), 5, 5)]
    split = make_split(dataset(rows), min_rating=4.0)
    assert raw_sequences(split) == {"1": ["3", "4", "5", big, str(int(big) + 1)]}
    assert split.item_ids == ["3", "4", "5", big, str(int(big) + 1)]


def test_timestamp_ties_put_integer_ids_first_by_value_then_text_ids_as_text():
    rows = [("u", "b", 5, 5), ("u", "10", 5, 5), ("u", "a", 5, 5), ("u", "9", 5, 5)]
    split = make_split(dataset(rows), min_rating=4.0)
    assert raw_sequences(split) == {"u": ["9", "10", "a", "b"]}


def test_a_tie_is_not_decided_by_another_users_item():
    """One text id elsewhere in the catalog must not turn user u's 9 and 10 into text."""
    rows = [("u", "1", 1, 5), ("u", "2", 2, 5), ("u", "9", 3, 5), ("u", "10", 3, 5)]
    rows += [("v", "1", 1, 5), ("v", "2", 2, 5)]
    for other in ("3", "x3"):
        split = make_split(dataset([*rows, ("v", other, 3, 5)]), min_rating=4.0)
        assert raw_sequences(split)["u"] == ["1", "2", "9", "10"]


def test_order_does_not_depend_on_file_order():
    rows = [
        (u, str(i), t, 5)
        for u, i, t in [
            ("3", 7, 1),
            ("3", 5, 1),
            ("3", 6, 2),
            ("12", 5, 9),
            ("12", 8, 3),
            ("12", 7, 3),
            ("12", 6, 4),
            ("2", 8, 0),
            ("2", 6, 0),
            ("2", 5, 0),
        ]
    ]
    expected = {"2": ["5", "6", "8"], "3": ["5", "7", "6"], "12": ["7", "8", "6", "5"]}
    for seed in range(3):
        shuffled = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        split = make_split(dataset(shuffled), min_rating=4.0)
        assert split.user_ids == ["2", "3", "12"]  # numeric user order
        assert split.item_ids == ["5", "6", "7", "8"]
        assert raw_sequences(split) == expected


# --- filtering ---------------------------------------------------------------------


def test_rating_filter_is_inclusive_and_short_users_are_dropped():
    rows = [
        # user a: three positives, one at the boundary 4.0; the 3.9 is not a positive
        ("a", "1", 1, 4.0),
        ("a", "2", 2, 5.0),
        ("a", "3", 3, 3.9),
        ("a", "4", 4, 4.5),
        # user b: only two positives -> dropped, and item 9 (only b's) leaves the catalog
        ("b", "1", 1, 5.0),
        ("b", "9", 2, 5.0),
        ("b", "2", 3, 1.0),
        ("b", "3", 4, 2.0),
        # user c: exactly three positives -> kept
        ("c", "3", 1, 4.0),
        ("c", "2", 2, 4.0),
        ("c", "1", 3, 4.0),
    ]
    split = make_split(dataset(rows), min_rating=4.0)
    assert split.user_ids == ["a", "c"]
    assert split.item_ids == ["1", "2", "3", "4"]
    assert raw_sequences(split) == {"a": ["1", "2", "4"], "c": ["3", "2", "1"]}

    lower = make_split(dataset(rows), min_rating=3.9)
    assert raw_sequences(lower)["a"] == ["1", "2", "3", "4"]


def test_repeated_positive_counts_once():
    rows = [("u", "1", 1, 5), ("u", "1", 2, 5), ("u", "2", 3, 5), ("v", "1", 1, 5)]
    rows += [("v", "2", 2, 5), ("v", "3", 3, 5)]
    split = make_split(dataset(rows), min_rating=4.0)
    assert split.user_ids == ["v"]  # u has two distinct positive items only


def test_min_user_positives_is_applied():
    sequences = {"a": ["1", "2", "3"], "b": ["1", "2", "3", "4"]}
    split = make_split(sequence_dataset(sequences), min_rating=4.0, min_user_positives=4)
    assert split.user_ids == ["b"]
    with pytest.raises(TwoTowerError, match="at least 3"):
        make_split(sequence_dataset(sequences), min_rating=4.0, min_user_positives=2)


def test_nothing_left_after_filtering_is_an_error():
    rows = [("u", str(i), i, 5.0) for i in range(5)]
    with pytest.raises(TwoTowerError, match="nothing left after filtering toy") as error:
        make_split(dataset(rows), min_rating=6.0)
    assert "rating >= 6.0" in str(error.value)


def test_interactions_without_rating_are_all_positive():
    frame = pd.DataFrame(
        {"user": ["u"] * 3, "item": ["x", "y", "z"], "timestamp": np.array([3, 2, 1])}
    )
    split = make_split(Dataset("norating", frame), min_rating=4.0)
    assert raw_sequences(split) == {"u": ["z", "y", "x"]}


# --- targets, histories, metadata ----------------------------------------------------------


def test_valid_is_second_to_last_and_test_is_last():
    split = make_split(sequence_dataset({"1": ["5", "6", "7", "8", "9"], "2": ["7", "5", "6"]}), 4)
    index = {item: i + 1 for i, item in enumerate(split.item_ids)}
    assert split.targets("valid").tolist() == [index["8"], index["5"]]
    assert split.targets("test").tolist() == [index["9"], index["6"]]
    assert split.train(1).tolist() == [index[i] for i in ["5", "6", "7"]]
    assert split.history(1, "valid").tolist() == [index[i] for i in ["5", "6", "7"]]
    assert split.history(1, "test").tolist() == [index[i] for i in ["5", "6", "7", "8"]]
    assert split.history(2, "valid").tolist() == [index["7"]]
    assert split.history(2, "test").tolist() == [index["7"], index["5"]]


def test_item_metadata_is_aligned_with_item_indexes():
    items = pd.DataFrame(
        {
            "item": ["2", "1", "99"],
            "title": ["Two", "One", "Unused"],
            "genres": [["b", "a"], ["c"], ["z"]],
        }
    )
    data = sequence_dataset({"u": ["1", "2", "3"]})
    split = make_split(Dataset("toy", data.interactions, items), min_rating=4.0)
    assert split.item_ids == ["1", "2", "3"]
    assert split.titles == ["One", "Two", ""]  # item 3 has no metadata
    assert split.genre_names == ["a", "b", "c"]  # only genres of catalog items
    expected = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(split.item_genres, expected)


# --- training examples ---------------------------------------------------------------


def test_training_examples_are_the_prefix_pairs_truncated():
    # user 1 trains on items [1..5] (6, 7 are valid/test); user 2 on [3] only (no pair)
    seqs = {
        "1": ["1", "2", "3", "4", "5", "6", "7"],
        "2": ["3", "1", "2"],
        "3": ["4", "2", "1", "3"],
    }
    split = make_split(sequence_dataset(seqs), min_rating=4.0)
    assert split.item_ids == ["1", "2", "3", "4", "5", "6", "7"]  # index == raw id here

    examples = training_examples(split, max_history_len=3)
    assert examples.users.tolist() == [1, 1, 1, 1, 3]
    assert examples.histories().tolist() == [
        [0, 0, 1],
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],  # truncated to the last 3 items
        [0, 0, 4],
    ]
    assert examples.targets.tolist() == [2, 3, 4, 5, 2]
    assert len(examples) == 5


def test_training_examples_need_a_user_with_four_positives():
    split = make_split(sequence_dataset({"a": ["1", "2", "3"], "b": ["2", "3", "4"]}), 4.0)
    with pytest.raises(TwoTowerError, match="no training examples"):
        training_examples(split, 5)
    with pytest.raises(TwoTowerError, match="no training examples"):
        training_windows(split, 5)


@pytest.fixture(scope="module")
def synthetic_split():
    # lengths vary from 3 to 40 positives per user after the rating filter
    data = generate(num_users=40, num_items=60, num_topics=4, length=40, seed=3)
    frame = data.interactions
    keep = frame.groupby("user").cumcount() < frame["user"].astype(int) % 37 + 3
    return make_split(Dataset("synthetic", frame[keep].reset_index(drop=True)), 4.0)


@pytest.mark.parametrize("max_len", [1, 2, 3, 4, 7, 16])
def test_training_windows_cover_exactly_the_prefix_pairs(synthetic_split, max_len):
    split = synthetic_split
    lengths = {len(split.train(u)) for u in range(1, split.num_users + 1)}
    assert min(lengths) <= 2 and max(lengths) > 2 * max_len  # short and long users

    examples = training_examples(split, max_len)
    windows = training_windows(split, max_len)
    expected = Counter(zip(examples.users.tolist(), examples.targets.tolist(), strict=True))
    owned = Counter(
        (int(user), int(target))
        for user, row in zip(windows.users, windows.targets, strict=True)
        for target in row
        if target != 0
    )
    assert owned == expected
    assert windows.inputs.shape == windows.targets.shape == (len(windows), max_len)

    for user, inputs, targets in zip(windows.users, windows.inputs, windows.targets, strict=True):
        train = split.train(int(user)).tolist()
        width = int((inputs != 0).sum())
        assert (inputs[: max_len - width] == 0).all()  # left-padded
        assert (targets[: max_len - width] == 0).all()
        for j in np.flatnonzero(targets):
            t = train.index(int(targets[j]))  # items are unique within a user
            exact = train[max(0, t - max_len) : t]
            seen = [int(i) for i in inputs[: j + 1] if i != 0]
            assert 1 <= len(seen) <= len(exact)
            assert seen == exact[len(exact) - len(seen) :]  # a suffix of the exact history
            assert len(seen) >= min(len(exact), max_len // 2)


def test_training_windows_hand_enumerated():
    split = make_split(sequence_dataset({"u": [str(i) for i in range(1, 9)]}), 4.0)
    # train = [1..6]: pairs ([1],2) .. ([1..5],6); L = 4, stride 2
    windows = training_windows(split, 4)
    assert windows.users.tolist() == [1, 1]
    assert windows.inputs.tolist() == [[1, 2, 3, 4], [2, 3, 4, 5]]
    assert windows.targets.tolist() == [[2, 3, 4, 5], [0, 0, 0, 6]]


def test_pad_left_keeps_the_most_recent_items_right_aligned():
    sequences = [np.array([1, 2, 3]), np.array([4]), np.array([], dtype=np.int64)]
    ids, mask = pad_left(sequences, max_len=2)
    assert ids.tolist() == [[2, 3], [0, 4], [0, 0]]
    assert mask.tolist() == [[True, True], [False, True], [False, False]]
    ids, mask = pad_left([np.array([5]), np.array([6])], max_len=50)
    assert ids.tolist() == [[5], [6]]  # as wide as the longest history, not max_len
    ids, mask = pad_left([np.array([], dtype=np.int64)], max_len=50)
    assert ids.tolist() == [[0]] and mask.tolist() == [[False]]
