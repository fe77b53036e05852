"""The ``files`` dataset: CSV/TSV/Parquet interactions and items, and its error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.config import TwoTowerConfig
from twotower.data import files
from twotower.data.dataset import Dataset
from twotower.data.split import make_split
from twotower.errors import TwoTowerError

RATINGS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.5,964981247
2,6,3.0,964982224
2,47,5.0,964983815
"""
MOVIES_CSV = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
3,"American President, The (1995)",Comedy|Drama|Romance
6,Heat (1995),Action|Crime|Thriller
47,Seven (a.k.a. Se7en) (1995),(no genres listed)
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config(**values) -> TwoTowerConfig:
    return TwoTowerConfig(dataset="files", **values)


def message_of(call, *args, **kwargs) -> str:
    with pytest.raises(TwoTowerError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


# --- reading ---------------------------------------------------------------------


def test_movielens_ratings_and_movies_csv_load_as_they_are(tmp_path):
    ratings = write(tmp_path / "ratings.csv", RATINGS_CSV)
    movies = write(tmp_path / "movies.csv", MOVIES_CSV)
    dataset = files.load(config(interactions=str(ratings), items=str(movies)))

    assert dataset.name == "ratings"
    frame = dataset.interactions
    assert list(frame.columns) == ["user", "item", "timestamp", "rating"]
    assert frame["user"].tolist() == ["1", "1", "2", "2"]
    assert frame["item"].tolist() == ["1", "3", "6", "47"]
    assert frame["timestamp"].dtype == np.int64
    assert frame["timestamp"].tolist() == [964982703, 964981247, 964982224, 964983815]
    assert frame["rating"].dtype == np.float64
    assert frame["rating"].tolist() == [4.0, 4.5, 3.0, 5.0]

    items = dataset.items
    assert items["item"].tolist() == ["1", "3", "6", "47"]
    assert items["title"][1] == "American President, The (1995)"
    assert items["genres"][0] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert items["genres"][3] == []  # "(no genres listed)" is no genre


@pytest.mark.parametrize(
    "header",
    [
        "user,item,timestamp,rating",
        "user_id,item_id,time,rating",
        "UserID,MovieID,Timestamp,Rating",
        "userid,itemid,ts,score",
    ],
)
def test_usual_column_spellings_are_recognised(tmp_path, header):
    path = write(tmp_path / "x.csv", header + "\n7,8,100,4\n7,9,200,2.5\n")
    frame = files.load_interactions(path)
    assert frame["user"].tolist() == ["7", "7"]
    assert frame["item"].tolist() == ["8", "9"]
    assert frame["timestamp"].tolist() == [100, 200]
    assert frame["rating"].tolist() == [4.0, 2.5]


def test_column_names_are_configurable(tmp_path):
    interactions = write(
        tmp_path / "log.csv",
        "who,what,when,stars,user\nann,x1,5,1,ignored\nbob,x2,6,5,ignored\n",
    )
    items = write(tmp_path / "catalog.csv", "what,label,tags\nx1,First,a|b\nx2,Second,\n")
    dataset = files.load(
        config(
            interactions=str(interactions),
            items=str(items),
            user_col="who",
            item_col="what",
            time_col="when",
            rating_col="stars",
            title_col="label",
            genres_col="tags",
        )
    )
    frame = dataset.interactions
    assert frame["user"].tolist() == ["ann", "bob"]  # the named column wins over the alias
    assert frame["item"].tolist() == ["x1", "x2"]
    assert frame["timestamp"].tolist() == [5, 6]
    assert frame["rating"].tolist() == [1.0, 5.0]
    assert dataset.items["title"].tolist() == ["First", "Second"]
    assert dataset.items["genres"].tolist() == [["a", "b"], []]


def test_string_ids_are_kept_as_text_and_stripped(tmp_path):
    path = write(
        tmp_path / "x.csv",
        "user,item,timestamp\n alice , tt0111161 ,100\nbob,007,200\n",
    )
    frame = files.load_interactions(path)
    assert frame["user"].tolist() == ["alice", "bob"]
    assert frame["item"].tolist() == ["tt0111161", "007"]  # no int conversion, no lost zeros
    assert "rating" not in frame.columns  # no rating column: every row is a positive


def test_without_rating_every_interaction_is_positive(tmp_path):
    rows = "".join(f"u,i{n},{n}\n" for n in range(4))
    path = write(tmp_path / "x.csv", "user,item,timestamp\n" + rows)
    split = make_split(files.load(config(interactions=str(path))), min_rating=4.0)
    assert split.user_ids == ["u"]
    assert [split.item_ids[i - 1] for i in split.sequences[0]] == ["i0", "i1", "i2", "i3"]


def test_rating_col_none_ignores_the_rating_column(tmp_path):
    # ratings below --min-rating would drop i1 and i3; with none every row is a positive
    rows = "".join(f"u,i{n},{n},{5 if n % 2 == 0 else 1}\n" for n in range(4))
    path = write(tmp_path / "x.csv", "user,item,timestamp,rating\n" + rows)
    dataset = files.load(config(interactions=str(path), rating_col="none"))
    assert "rating" not in dataset.interactions.columns
    split = make_split(dataset, min_rating=4.0)
    assert [split.item_ids[i - 1] for i in split.sequences[0]] == ["i0", "i1", "i2", "i3"]


def test_tsv_is_read_tab_separated(tmp_path):
    path = write(tmp_path / "x.tsv", "user\titem\ttimestamp\trating\n1\t2\t3\t4\n")
    frame = files.load_interactions(path)
    assert frame.iloc[0].tolist() == ["1", "2", 3, 4.0]


def test_parquet_with_typed_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame(
        {
            "userId": np.array([1, 2], dtype=np.int64),
            "movieId": np.array([10.0, 20.0]),  # integral floats are the ids 10 and 20
            "timestamp": pd.to_datetime([1_000_000_000, 1_000_000_060], unit="s"),
            "rating": np.array([4.0, 3.5]),
        }
    ).to_parquet(path)
    items_path = tmp_path / "items.parquet"
    pd.DataFrame(
        {"movieId": [10, 20], "title": ["Ten", "Twenty"], "genres": [["A", "B"], []]}
    ).to_parquet(items_path)

    dataset = files.load(config(interactions=str(path), items=str(items_path)))
    frame = dataset.interactions
    assert frame["user"].tolist() == ["1", "2"]
    assert frame["item"].tolist() == ["10", "20"]
    assert frame["timestamp"].dtype == np.int64  # counts of the datetime's own unit
    first, second = frame["timestamp"].tolist()
    assert second - first == 60 * (first // 1_000_000_000)
    assert frame["rating"].tolist() == [4.0, 3.5]
    assert dataset.items["item"].tolist() == ["10", "20"]
    assert [list(g) for g in dataset.items["genres"]] == [["A", "B"], []]


def test_parquet_items_with_float_ids_match_the_interactions(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"user": ["a"] * 3, "item": [1.0, 2.0, 3.0], "timestamp": [1, 2, 3]}).to_parquet(
        path
    )
    items_path = tmp_path / "items.parquet"
    pd.DataFrame({"item": [1.0, 2.0, 3.0], "title": ["One", "Two", "Three"]}).to_parquet(items_path)
    dataset = files.load(config(interactions=str(path), items=str(items_path)))
    split = make_split(dataset, min_rating=4.0)
    assert split.titles == ["One", "Two", "Three"]


def test_parquet_list_genres_are_cleaned_as_text_genres_are(tmp_path):
    interactions = write(tmp_path / "x.csv", "user,item,timestamp\n1,a,1\n1,b,2\n1,c,3\n")
    genres = [["Drama", None], ["", " Comedy "], ["(no genres listed)"]]
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item": ["a", "b", "c"], "title": ["A", "B", "C"], "genres": genres}).to_parquet(
        items
    )
    text = write(
        tmp_path / "items.csv", "item,genres\na,Drama|\nb,| Comedy \nc,(no genres listed)\n"
    )
    for path in (items, text):
        dataset = files.load(config(interactions=str(interactions), items=str(path)))
        assert make_split(dataset, min_rating=0.0).genres == [["Drama"], ["Comedy"], []]


def test_genres_neither_text_nor_a_list_are_refused_with_their_row(tmp_path):
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item": ["a", "b"], "genres": [1, 2]}).to_parquet(items)
    message = message_of(files.load_items, items)
    assert message == f"{items}: row 1, column 'genres': 1 is not text nor a list of genre names"


def test_an_items_table_naming_none_of_the_items_is_refused(tmp_path):
    """pandas writes float ids as 10.0: none of them is the interactions' item 10."""
    interactions = write(tmp_path / "x.csv", "user,item,timestamp\n1,10,1\n1,20,2\n1,30,3\n")
    items = write(tmp_path / "items.csv", "item,title\n10.0,Ten\n20.0,Twenty\n30.0,Thirty\n")
    dataset = files.load(config(interactions=str(interactions), items=str(items)))
    message = message_of(make_split, dataset, min_rating=0.0)
    assert message.startswith("x: none of the 3 items of its items table is an item of its")
    assert "(items: '10.0', '20.0', '30.0', ...; interactions: '10', '20', '30', ...)" in message


def test_whole_float_ids_past_int64_stay_distinct(tmp_path):
    # 1e19 and 2e19 are whole numbers no int64 holds: each is its own id, written in full
    path = tmp_path / "x.parquet"
    users = [1e19, 1e19, 2e19, 2e19, -3e19]
    pd.DataFrame({"user": users, "item": [1, 2, 1, 3, 2], "timestamp": range(5)}).to_parquet(path)
    frame = files.load(config(interactions=str(path))).interactions
    assert frame["user"].tolist() == [
        "10000000000000000000",
        "10000000000000000000",
        "20000000000000000000",
        "20000000000000000000",
        "-30000000000000000000",
    ]


def test_a_fractional_float_id_leaves_the_whole_ones_integers(tmp_path):
    """One 1.5 in a float column must not turn every other user into "2.0"."""
    path = tmp_path / "x.parquet"
    users = [2.0, 1.5, 3.0, 1e19, float("inf")]
    pd.DataFrame({"user": users, "item": [1, 2, 1, 3, 2], "timestamp": range(5)}).to_parquet(path)
    frame = files.load(config(interactions=str(path))).interactions
    assert frame["user"].tolist() == ["2", "1.5", "3", "10000000000000000000", "inf"]


# --- errors: one line naming the file (and row and column for values) --------------


def test_missing_interactions_file(tmp_path):
    path = tmp_path / "absent.csv"
    message = message_of(files.load, config(interactions=str(path)))
    assert message == f"file not found: {path}"


def test_missing_items_file(tmp_path):
    ratings = write(tmp_path / "ratings.csv", RATINGS_CSV)
    path = tmp_path / "absent_items.csv"
    message = message_of(files.load, config(interactions=str(ratings), items=str(path)))
    assert message == f"file not found: {path}"


def test_files_dataset_needs_an_interactions_file():
    message = message_of(files.load, config())
    assert "--interactions" in message


@pytest.mark.parametrize(
    ("header", "role"),
    [
        ("item,timestamp,rating", "user"),
        ("user,timestamp,rating", "item"),
        ("user,item,rating", "timestamp"),
    ],
)
def test_missing_column_names_file_role_and_columns(tmp_path, header, role):
    path = write(tmp_path / "x.csv", header + "\n1,2,3\n")
    message = message_of(files.load_interactions, path)
    assert message.startswith(f"{path}: missing {role} column")
    assert str(header.split(",")) in message  # the columns the file does have


def test_named_column_that_does_not_exist(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,timestamp\n1,2,3\n")
    message = message_of(files.load_interactions, path, user_col="uid")
    assert message.startswith(f"{path}: no column 'uid' (for user)")


def test_non_numeric_rating_names_file_row_and_column(tmp_path):
    path = write(
        tmp_path / "x.csv",
        "user,item,rating,timestamp\n1,1,4,10\n1,2,5,11\n1,3,four,12\n1,4,oops,13\n",
    )
    message = message_of(files.load_interactions, path)
    # the first bad value, on line 4 of the file (line 1 is the header)
    assert message == f"{path}: row 4, column 'rating': 'four' is not a number"


def test_non_numeric_timestamp_names_file_row_and_column(tmp_path):
    path = write(
        tmp_path / "x.csv",
        "user,item,rating,timestamp\n1,1,4,10\n1,2,5,2020-01-01\n",
    )
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 3, column 'timestamp': '2020-01-01' is not a number"


def test_empty_rating_is_reported_with_its_row(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,rating,timestamp\n1,1,4,10\n1,2,,11\n")
    message = message_of(files.load_interactions, path)
    assert message.startswith(f"{path}: row 3, column 'rating'")


def test_empty_id_is_reported_with_its_row(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,timestamp\n1,1,10\n,2,11\n")
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 3, column 'user': empty value"


def test_non_numeric_rating_in_parquet_names_the_file_and_column(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1, 2], "rating": ["4", "bad"]}
    ).to_parquet(path)
    message = message_of(files.load_interactions, path)
    assert message.startswith(f"{path}: row ")
    assert "column 'rating': 'bad' is not a number" in message


def test_header_only_file_has_no_interactions(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,timestamp\n")
    assert message_of(files.load_interactions, path) == f"{path}: no interactions"


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not a parquet file")
    message = message_of(files.load_interactions, path)
    assert message.startswith(f"{path}: cannot read")


def test_a_ragged_csv_is_refused_in_one_line(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,timestamp\n1,2,3\n1,3,4,extra\n")
    message = message_of(files.load_interactions, path)
    assert message.startswith(f"{path}: cannot read (ParserError: ")
    assert "Expected 3 fields in line 3, saw 4" in message and "\n" not in message


def test_a_folder_given_as_the_file_is_named_a_folder(tmp_path):
    message = message_of(files.load_interactions, tmp_path)
    assert message == f"{tmp_path} is a folder; give a CSV or Parquet file"


def test_a_column_named_twice_in_the_header_is_refused(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,timestamp,rating,rating,,\n1,a,1,1,5,,\n")
    assert message_of(files.load_interactions, path) == (
        f"{path}: the header names column(s) rating twice"
    )


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"time_col": "item"}, "column 'item' is picked as both item and timestamp"),
        ({"user_col": "item"}, "column 'item' is picked as both user and item"),
    ],
)
def test_one_column_in_two_roles_is_refused(tmp_path, flags, says):
    path = write(tmp_path / "x.csv", "user,item,timestamp\n1,10,1\n")
    assert message_of(files.load_interactions, path, **flags) == f"{path}: {says}"
    items = write(tmp_path / "items.csv", "item,title\n10,Ten\n")
    message = message_of(files.load_items, items, title_col="item")
    assert message == f"{items}: column 'item' is picked as both item and title"


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "x.csv"
    lines = ["user,item,timestamp", *[f"{u},a,{u}" for u in range(300)], "9,caf\xe9,3"]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    assert message_of(files.load_interactions, path) == (
        f"{path}: line 302 is not UTF-8 text (byte 0xe9); save it as UTF-8"
    )


def test_a_compressed_tsv_is_read_tab_separated(tmp_path):
    path = tmp_path / "x.tsv.gz"
    frame = pd.DataFrame({"user": ["1", "1"], "item": ["a", "b"], "timestamp": ["1", "2"]})
    frame.to_csv(path, sep="\t", index=False)
    assert files.load_interactions(path)["item"].tolist() == ["a", "b"]


def test_item_listed_twice_in_items_file(tmp_path):
    path = write(tmp_path / "movies.csv", "movieId,title\n1,A\n2,B\n1,C\n")
    message = message_of(files.load_items, path)
    assert message == f"{path}: row 4, column 'item': item '1' listed twice"


def test_a_bad_row_is_named_by_its_line_past_blank_lines_and_quoted_line_breaks(tmp_path):
    text = 'user,item,timestamp,note\n\n1,a,1,\n1,b,2,"two\nlines"\n  \n1,d,x,\n'
    path = write(tmp_path / "x.csv", text)
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 7, column 'timestamp': 'x' is not a number"  # line 7
    items = write(tmp_path / "items.csv", "item,title\n\n\n1,A\n\n1,B\n")
    assert message_of(files.load_items, items).startswith(f"{items}: row 6, column 'item'")


# --- timestamps keep their meaning -----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("inf", "'inf' is not a finite number"),
        ("-inf", "'-inf' is not a finite number"),
        ("nan", "'nan' is not a number"),
        ("1e30", "'1e30' is out of range (at most ±9.2e18)"),
        ("-99999999999999999999", "'-99999999999999999999' is out of range (at most ±9.2e18)"),
    ],
)
def test_a_timestamp_without_a_place_in_time_is_refused_with_its_row(tmp_path, value, problem):
    path = write(tmp_path / "x.csv", f"user,item,timestamp\n1,1,10\n1,2,{value}\n")
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 3, column 'timestamp': {problem}"


def test_an_infinite_rating_is_refused_with_its_row(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,rating,timestamp\n1,1,4,10\n1,2,inf,11\n")
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 3, column 'rating': 'inf' is not a finite number"


@pytest.mark.parametrize(("cell", "problem"), [("   ", "empty value"), ("\t", "blank id")])
def test_a_blank_id_is_refused_with_its_row(tmp_path, cell, problem):
    path = write(tmp_path / "x.csv", f"user,item,timestamp\n1,1,10\n1,{cell},11\n")
    assert message_of(files.load_interactions, path) == f"{path}: row 3, column 'item': {problem}"


def split_order(frame: pd.DataFrame) -> list[str]:
    dataset = Dataset("x", frame)
    split = make_split(dataset, min_rating=0.0)
    return [split.item_ids[i - 1] for i in split.sequences[0]]


def test_fractional_seconds_order_the_history(tmp_path):
    """Truncated to whole seconds, all four would tie and order by item id instead."""
    path = write(
        tmp_path / "x.csv",
        "user,item,timestamp\n1,1,10.9\n1,2,10.7\n1,3,10.5\n1,4,10.25\n",
    )
    frame = files.load_interactions(path)
    assert frame["timestamp"].dtype == np.float64
    assert split_order(frame) == ["4", "3", "2", "1"]


def test_whole_number_timestamps_stay_exact_integers(tmp_path):
    big = 1_700_000_000_123_456_789  # nanoseconds: more digits than a float64 holds
    path = write(tmp_path / "x.csv", f"user,item,timestamp\n1,1,{big + 1}\n1,2,{big}\n1,3,10\n")
    frame = files.load_interactions(path)
    assert frame["timestamp"].dtype == np.int64
    assert frame["timestamp"].tolist() == [big + 1, big, 10]
    assert split_order(frame) == ["3", "2", "1"]


@pytest.mark.parametrize("other", ["10.5", f"{1_700_000_000_123_456_790}.0"])
def test_nanosecond_timestamps_beside_a_fraction_keep_their_order(tmp_path, other):
    """As float64 the two nanosecond times would be one and tie, ordered by item id."""
    big = 1_700_000_000_123_456_789
    rows = f"1,1,{big}\n1,2,{big - 1}\n1,3,{other}\n"
    frame = files.load_interactions(write(tmp_path / "x.csv", "user,item,timestamp\n" + rows))
    expected = ["3", "2", "1"] if other == "10.5" else ["2", "1", "3"]
    assert split_order(frame) == expected


def test_parquet_datetimes_keep_sub_second_order(tmp_path):
    path = tmp_path / "x.parquet"
    times = pd.to_datetime(
        ["2020-01-01 00:00:00.9", "2020-01-01 00:00:00.1", "2020-01-01 00:00:00.5"]
    )
    items = ["a", "b", "c"]
    pd.DataFrame({"user": ["u"] * 3, "item": items, "timestamp": times}).to_parquet(path)
    assert split_order(files.load_interactions(path)) == ["b", "c", "a"]


def test_a_missing_parquet_datetime_is_refused_with_its_row(tmp_path):
    path = tmp_path / "x.parquet"
    times = pd.to_datetime(["2020-01-01", None])
    pd.DataFrame({"user": ["u", "u"], "item": ["a", "b"], "timestamp": times}).to_parquet(path)
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 2, column 'timestamp': empty value"


def test_nanoseconds_written_as_fractional_seconds_keep_their_order(tmp_path):
    """``date +%s.%N``: float64 would make the 400 and 500 ns times one, ordered by id."""
    rows = [("w", 100), ("x", 200), ("y", 300), ("z", 400), ("b", 500), ("a", 600)]
    text = "".join(f"u,{item},1600000000.000000{ns}\n" for item, ns in rows)
    frame = files.load_interactions(write(tmp_path / "x.csv", "user,item,timestamp\n" + text))
    assert split_order(frame) == ["w", "x", "y", "z", "b", "a"]


def test_one_time_written_two_ways_is_one_time(tmp_path):
    """1.5 and 1.50 tie (and are broken by item id), as their value says."""
    text = "user,item,timestamp\nu,b,1.50\nu,a,1.5\nu,c,0.5\n"
    frame = files.load_interactions(write(tmp_path / "x.csv", text))
    assert frame["timestamp"].dtype == np.float64
    assert split_order(frame) == ["c", "a", "b"]


def test_a_parquet_date_orders_like_a_datetime(tmp_path):
    path = tmp_path / "x.parquet"
    days = [pd.Timestamp(day).date() for day in ("2020-01-03", "2020-01-01", "2020-01-02")]
    pd.DataFrame({"user": ["u"] * 3, "item": ["a", "b", "c"], "timestamp": days}).to_parquet(path)
    assert split_order(files.load_interactions(path)) == ["b", "c", "a"]


@pytest.mark.parametrize("name", ["events.parq", "events", "events.csv"])
def test_parquet_is_read_as_parquet_whatever_its_name(tmp_path, name):
    path = tmp_path / name
    frame = pd.DataFrame({"user": ["u", "u"], "item": ["a", "b"], "timestamp": [2, 1]})
    frame.to_parquet(path)
    assert files.load_interactions(path)["item"].tolist() == ["a", "b"]


def test_rows_ending_in_a_delimiter_are_read_as_they_are(tmp_path):
    """pandas would take the first column as the index: users would be the items."""
    text = "user,item,timestamp,rating\nu0,2,1000,5,\nu1,3,1001,4,\n"
    frame = files.load_interactions(write(tmp_path / "x.csv", text))
    assert frame.to_dict("list") == {
        "user": ["u0", "u1"],
        "item": ["2", "3"],
        "timestamp": [1000, 1001],
        "rating": [5.0, 4.0],
    }


def test_values_past_the_header_s_columns_are_refused_with_their_line(tmp_path):
    """Every row one value longer: pandas would drop the last values with a warning.
    (Some rows longer is the ragged file of the test above.)"""
    text = "user,item,timestamp\n\n1,a,10,\n1,b,11,7\n"
    path = write(tmp_path / "x.csv", text)
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: line 4 has 4 values where the header names 3 columns"


def test_spaces_after_the_delimiter_are_not_part_of_names_or_values(tmp_path):
    text = 'user, item, timestamp, title\nu, 7, 1, "Heat, the"\n'
    frame = files.load_items(write(tmp_path / "x.csv", text))
    assert frame[["item", "title"]].to_dict("records") == [{"item": "7", "title": "Heat, the"}]


@pytest.mark.parametrize(("header", "mark"), [("user;item;timestamp", ";"), ("a|b|c", "|")])
def test_a_header_with_another_delimiter_is_named_as_such(tmp_path, header, mark):
    path = write(tmp_path / "x.csv", f"{header}\n1;a;4,5\n")
    assert message_of(files.load_interactions, path) == (
        f"{path}: its header {header!r} reads as one column: is it separated by {mark!r}? "
        "twotower reads commas in a .csv and tabs in a .tsv"
    )


def test_a_quote_left_open_is_refused_not_joined_with_the_rows_after_it(tmp_path):
    """Items 4 and 5 would vanish into item 3's title, and item 3 would get 5's genre."""
    lines = ["item\ttitle\tgenres", "1\tOne\tDrama", '3\t"Quote\tComedy', "4\tFour\tAction"]
    path = write(tmp_path / "items.tsv", "\n".join([*lines, '5\tFive "x"\tHorror']) + "\n")
    message = message_of(files.load_items, path)
    assert message.startswith(f"{path}: row 3, column 'title': 'Quote\\tComedy\\n4\\tFour")
    assert message.endswith(
        "holds a line break; is a quote left open? It joins the lines after it into this value"
    )


def test_an_items_file_without_rows_is_refused(tmp_path):
    path = write(tmp_path / "items.csv", "item,title\n")
    assert message_of(files.load_items, path) == f"{path}: no items"


def test_items_the_items_file_leaves_out_are_counted(tmp_path, capsys):
    from twotower.api import prepare

    rows = "".join(f"u,{item},{item}\n" for item in range(1, 5))
    ratings = write(tmp_path / "r.csv", "user,item,timestamp\n" + rows)
    items = write(tmp_path / "items.csv", "item,title\n01,A\n2,B\n")
    split = prepare(config(interactions=str(ratings), items=str(items)))
    assert split.titles == ["", "B", "", ""] and split.undescribed == ["1", "3", "4"]
    note = "3 of 4 items have no row in the items table (e.g. '1', '3', '4')"
    assert note in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_a_bad_row_of_a_compressed_file_is_named_by_its_line(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    path = tmp_path / f"x.tsv{suffix}"
    with opener(path, "wt", encoding="utf-8") as text:
        text.write("user\titem\ttimestamp\n1\ta\t1\n\n  \n1\tb\tx\n")
    message = message_of(files.load_interactions, path)
    assert message == f"{path}: row 5, column 'timestamp': 'x' is not a number"  # line 5
