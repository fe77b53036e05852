"""MovieLens-100K: both layouts, the pinned content, the reference split, and fetching."""

from __future__ import annotations

import contextlib
import hashlib
import io
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.data import movielens
from twotower.data.split import make_split
from twotower.errors import TwoTowerError

# (user, item, rating, timestamp) in file order: ties on timestamp, multi-digit ids,
# a rating below the threshold, ids out of order.
ROWS = [
    (196, 242, 3, 881250949),
    (186, 302, 3, 891717742),
    (22, 377, 1, 878887116),
    (244, 51, 2, 880606923),
    (196, 10, 5, 881250950),
    (196, 9, 4, 881250950),
    (22, 9, 4, 878887110),
    (186, 51, 5, 891717700),
    (244, 242, 4, 880606920),
    (22, 302, 5, 878887200),
    (186, 10, 4, 891717800),
    (244, 377, 5, 880606999),
    (196, 51, 4, 881250900),
    (22, 10, 4, 878887300),
    (186, 242, 5, 891717600),
    (196, 377, 5, 881251000),
    (244, 9, 3, 880606800),
]
# item -> (title, genres); one title is not ASCII, so u.item really is read as latin-1
ITEMS = {
    9: ("Dead Man Walking (1995)", ["Drama"]),
    10: ("Richard III (1995)", ["Drama", "War"]),
    51: ("Légends of the Fall (1994)", ["Drama", "Romance", "War", "Western"]),
    242: ("Kolya (1996)", ["Comedy"]),
    302: ("L.A. Confidential (1997)", ["Crime", "Film-Noir", "Mystery", "Thriller"]),
    377: ("Heavyweights (1994)", ["Children's", "Comedy"]),
}
RECBOLE_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"


def grouplens_files() -> dict[str, bytes]:
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS)
    lines = []
    for item, (title, genres) in ITEMS.items():
        flags = "|".join("1" if g in genres else "0" for g in movielens.GENRES)
        lines.append(f"{item}|{title}|01-Jan-1995||http://example.org/{item}|{flags}\n")
    return {"u.data": data.encode(), "u.item": "".join(lines).encode("latin-1")}


def recbole_files() -> dict[str, bytes]:
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS)
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(f"{i}\t{title}\t1995\t{' '.join(g)}\n" for i, (title, g) in ITEMS.items())
    return {"ml-100k.inter": inter.encode(), "ml-100k.item": item.encode()}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return folder


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def expected_interactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": [str(u) for u, _, _, _ in ROWS],
            "item": [str(i) for _, i, _, _ in ROWS],
            "timestamp": np.array([t for *_, t in ROWS], dtype=np.int64),
            "rating": np.array([r for _, _, r, _ in ROWS], dtype=np.float64),
        }
    )


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


# --- parsing -------------------------------------------------------------------


def test_both_layouts_give_identical_interactions_in_order(tmp_path):
    grouplens = movielens.read_folder(write_files(tmp_path / "gl", grouplens_files()))
    recbole = movielens.read_folder(write_files(tmp_path / "rb", recbole_files()))

    expected = expected_interactions()
    for dataset in (grouplens, recbole):
        got = dataset.interactions[["user", "item", "timestamp", "rating"]]
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
        assert got["timestamp"].dtype == np.int64
        assert got["rating"].dtype == np.float64
        assert got["user"].tolist() == expected["user"].tolist()  # ids are str, not ints
    pd.testing.assert_frame_equal(grouplens.interactions, recbole.interactions)
    assert movielens.canonical_sha256(grouplens.interactions) == movielens.canonical_sha256(
        recbole.interactions
    )


def test_both_layouts_give_the_same_item_metadata(tmp_path):
    grouplens = movielens.read_folder(write_files(tmp_path / "gl", grouplens_files()))
    recbole = movielens.read_folder(write_files(tmp_path / "rb", recbole_files()))
    for dataset in (grouplens, recbole):
        assert dataset.items["item"].tolist() == [str(i) for i in ITEMS]
        assert dataset.items["title"].tolist() == [t for t, _ in ITEMS.values()]
        assert [list(g) for g in dataset.items["genres"]] == [g for _, g in ITEMS.values()]
    assert grouplens.items["title"][2] == "Légends of the Fall (1994)"  # latin-1 decoded


@pytest.mark.parametrize(
    ("layout", "item_file", "said"),
    [
        ("gl", "1|Toy|x|x|x|" + "|".join(["yes"] + ["0"] * 18), "genre columns must hold 0 or 1"),
        ("gl", "1|Toy Story|01-Jan-1995|\n", "line 1 has fewer than 24 fields (a truncated file?)"),
        ("gl", "cut", "of the rated items (e.g. item "),
        ("rb", "garbage\nline\n", "no column item_id, movie_title, class (found garbage)"),
        ("rb", "cut", "of the rated items (e.g. item "),
        ("rb-inter", "user\titem\n1\t2\n", "no column user_id, item_id, rating, timestamp"),
    ],
)
def test_an_item_file_that_is_not_movielens_is_named(tmp_path, layout, item_file, said):
    files = grouplens_files() if layout == "gl" else recbole_files()
    name = {"gl": "u.item", "rb": "ml-100k.item", "rb-inter": "ml-100k.inter"}[layout]
    if item_file == "cut":  # the first lines only: part of the catalog without its row
        item_file = "".join(files[name].decode("latin-1").splitlines(keepends=True)[:2])
    folder = write_files(tmp_path / layout, {**files, name: item_file.encode("latin-1")})
    with pytest.raises(TwoTowerError) as refused:
        movielens.read_folder(folder)
    assert str(refused.value).startswith(f"{folder / name}: ") and said in str(refused.value)


def test_split_of_both_layouts_is_identical(tmp_path):
    splits = [
        make_split(movielens.read_folder(write_files(tmp_path / n, f)), 4.0)
        for n, f in (("gl", grouplens_files()), ("rb", recbole_files()))
    ]
    a, b = splits
    # user 244 has 2 positives only; 196's items 9 and 10 tie on timestamp: 9 first
    assert a.user_ids == b.user_ids == ["22", "186", "196"]
    assert a.item_ids == b.item_ids == ["9", "10", "51", "242", "302", "377"]
    for split in splits:
        raw = [[split.item_ids[i - 1] for i in s] for s in split.sequences]
        assert raw == [["9", "302", "10"], ["242", "51", "10"], ["51", "9", "10", "377"]]
    assert a.genres == b.genres == [g for _, g in ITEMS.values()]
    np.testing.assert_array_equal(a.item_genres, b.item_genres)


def test_canonical_sha256_depends_on_order_and_values(tmp_path):
    frame = movielens.read_folder(write_files(tmp_path / "gl", grouplens_files())).interactions
    digest = movielens.canonical_sha256(frame)
    assert movielens.canonical_sha256(frame.iloc[::-1].reset_index(drop=True)) != digest
    changed = frame.copy()
    changed.loc[0, "rating"] = 4.0
    assert movielens.canonical_sha256(changed) != digest
    lines = "\n".join(f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in ROWS)
    assert digest == hashlib.sha256(lines.encode()).hexdigest()


def test_find_local_accepts_the_folder_or_its_parent(tmp_path):
    folder = write_files(tmp_path / "data" / "ml-100k", recbole_files())
    assert movielens.find_local(tmp_path / "data") == folder
    assert movielens.find_local(folder) == folder
    assert movielens.find_local(tmp_path) is None


def test_load_without_download_names_the_folder(tmp_path):
    with pytest.raises(TwoTowerError, match="MovieLens-100K not found in") as error:
        movielens.load(tmp_path, download=False)
    assert str(tmp_path) in str(error.value)


def test_load_rejects_data_that_is_not_the_pinned_movielens(tmp_path):
    write_files(tmp_path / "ml-100k", grouplens_files())
    with pytest.raises(TwoTowerError, match="not the MovieLens-100K interactions"):
        movielens.load(tmp_path, download=False)


# --- the real data (skipped when absent) -----------------------------------------


def test_real_data_has_the_pinned_content(ml100k):
    assert len(ml100k.interactions) == 100_000
    assert ml100k.interactions["user"].nunique() == 943
    assert ml100k.interactions["item"].nunique() == 1682
    assert len(ml100k.items) == 1682
    assert movielens.canonical_sha256(ml100k.interactions) == movielens.INTERACTIONS_SHA256


def test_real_data_loads_through_load(ml100k_dir):
    dataset = movielens.load(ml100k_dir, download=False)
    assert len(dataset.interactions) == 100_000


def test_real_split_reproduces_the_reference_targets(ml100k, reference_targets):
    reference = pd.read_csv(reference_targets, dtype=str)
    assert len(reference) == 942
    split = make_split(ml100k, min_rating=4.0)
    assert split.num_users == 942
    assert split.num_items == 1447
    assert split.user_ids == reference["user_id"].tolist()
    assert [split.item_ids[i - 1] for i in split.targets("valid")] == reference[
        "valid_item"
    ].tolist()
    assert [split.item_ids[i - 1] for i in split.targets("test")] == reference["test_item"].tolist()


# --- fetching ------------------------------------------------------------------


def grouplens_zip(tmp_path: Path, members: dict[str, bytes] | None = None):
    """A local ml-100k.zip and the GroupLensZip source that fetches it by file:// URL."""
    if members is None:
        members = {f"ml-100k/{n}": p for n, p in grouplens_files().items()}
        members["ml-100k/README"] = b"fixture"
    payload = zip_bytes(members)
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    return movielens.GroupLensZip(url=path.as_uri(), md5=md5)


def test_fetch_grouplens_zip_extracts_into_data_dir(tmp_path):
    data_dir = tmp_path / "data"
    folder = movielens.fetch(data_dir, [grouplens_zip(tmp_path)])
    assert folder == data_dir / "ml-100k"
    assert leftovers(data_dir) == ["ml-100k"]  # no staging folder left behind
    for name, payload in grouplens_files().items():
        assert (folder / name).read_bytes() == payload
    dataset = movielens.read_folder(folder)
    pd.testing.assert_frame_equal(dataset.interactions, expected_interactions(), check_dtype=False)


def test_fetch_grouplens_zip_without_top_folder(tmp_path):
    data_dir = tmp_path / "data"
    folder = movielens.fetch(data_dir, [grouplens_zip(tmp_path, grouplens_files())])
    assert sorted(p.name for p in folder.iterdir()) == ["u.data", "u.item"]
    assert leftovers(data_dir) == ["ml-100k"]


def test_fetch_with_wrong_md5_fails_and_leaves_nothing(tmp_path):
    source = grouplens_zip(tmp_path)
    source.md5 = "0" * 32
    data_dir = tmp_path / "data"
    with pytest.raises(TwoTowerError) as error:
        movielens.fetch(data_dir, [source])
    message = str(error.value)
    assert source.name in message
    assert "checksum mismatch" in message and "0" * 32 in message
    assert leftovers(data_dir) == []


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-100k/../../evil.txt", "../../evil.txt"])
def test_fetch_refuses_archive_members_escaping_the_folder(tmp_path, evil):
    members = {f"ml-100k/{n}": p for n, p in grouplens_files().items()}
    members[evil] = b"gotcha"
    work = tmp_path / "work"
    work.mkdir()
    data_dir = work / "data"
    with pytest.raises(TwoTowerError, match="escapes the target folder") as error:
        movielens.fetch(data_dir, [grouplens_zip(work, members)])
    assert evil in str(error.value)
    assert list(tmp_path.rglob("evil.txt")) == []
    assert leftovers(data_dir) == []


def test_safe_extract_refuses_before_extracting_anything(tmp_path):
    payload = zip_bytes({"a.txt": b"a", "../evil.txt": b"x"})
    target = tmp_path / "target"
    target.mkdir()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive, pytest.raises(TwoTowerError):
        movielens.safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    """A folder holding a fake recbole-1.2.1 wheel with the RecBole-layout fixture files."""
    folder = tmp_path_factory.mktemp("wheels")
    files = recbole_files()
    members = {
        RECBOLE_INTER: files["ml-100k.inter"],
        RECBOLE_ITEM: files["ml-100k.item"],
        "recbole/__init__.py": b"",
        "recbole-1.2.1.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n"
        ),
        "recbole-1.2.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "recbole-1.2.1.dist-info/RECORD": b"",
    }
    (folder / "recbole-1.2.1-py3-none-any.whl").write_bytes(zip_bytes(members))
    return folder


def recbole_source(wheel_dir: Path, **member_overrides: str) -> movielens.RecBoleWheel:
    files = recbole_files()
    members = {
        RECBOLE_INTER: hashlib.sha256(files["ml-100k.inter"]).hexdigest(),
        RECBOLE_ITEM: hashlib.sha256(files["ml-100k.item"]).hexdigest(),
    }
    members.update(member_overrides)
    return movielens.RecBoleWheel(
        members=members, pip_args=["--no-index", "--find-links", str(wheel_dir)]
    )


def test_fetch_falls_back_to_the_recbole_wheel(tmp_path, wheel_dir):
    broken = grouplens_zip(tmp_path)
    broken.md5 = "f" * 32
    data_dir = tmp_path / "data"
    wheel = recbole_source(wheel_dir)
    actual_md5 = hashlib.md5((tmp_path / "ml-100k.zip").read_bytes()).hexdigest()
    notes: list[str] = []
    folder = movielens.fetch(data_dir, [broken, wheel], notify=notes.append)
    assert folder == data_dir / "ml-100k"
    assert notes == [  # the user is told where the data comes from, and what failed
        f"fetching it from {broken.name}",
        f"{broken.name} failed: checksum mismatch (md5 {actual_md5}, expected {broken.md5})",
        f"fetching it from {wheel.name}",
        f"MovieLens-100K is in {folder}",
    ]
    assert leftovers(data_dir) == ["ml-100k"]
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    for name, payload in recbole_files().items():
        assert (folder / name).read_bytes() == payload
    dataset = movielens.read_folder(folder)
    pd.testing.assert_frame_equal(dataset.interactions, expected_interactions(), check_dtype=False)


def test_recbole_wheel_with_wrong_sha256_leaves_nothing(tmp_path, wheel_dir):
    # the .inter member is fine and is staged first; the .item member then fails
    source = recbole_source(wheel_dir, **{RECBOLE_ITEM: "a" * 64})
    data_dir = tmp_path / "data"
    with pytest.raises(TwoTowerError) as error:
        movielens.fetch(data_dir, [source])
    message = str(error.value)
    assert source.name in message
    assert f"checksum mismatch for {RECBOLE_ITEM}" in message
    assert leftovers(data_dir) == []


def test_when_every_source_fails_the_error_lists_each_one(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    missing_zip = movielens.GroupLensZip(url=(tmp_path / "absent.zip").as_uri(), md5="0" * 32)
    wheel = movielens.RecBoleWheel(pip_args=["--no-index", "--find-links", str(empty)])
    data_dir = tmp_path / "data"
    with pytest.raises(TwoTowerError) as error:
        movielens.fetch(data_dir, [missing_zip, wheel])
    message = str(error.value)
    assert message.startswith("could not fetch MovieLens-100K; ")
    assert "\n" not in message
    first = message.index(f"{missing_zip.name}: ")
    second = message.index(f"{wheel.name}: pip download failed: ")
    assert first < second
    assert "absent.zip" in message[first:second]  # the reason of the first source
    assert "recbole" in message[second:].lower()
    assert leftovers(data_dir) == []


def test_fetch_next_to_an_existing_folder_leaves_no_staging(tmp_path):
    data_dir = tmp_path / "data"
    mine = data_dir / "ml-100k" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with contextlib.suppress(TwoTowerError):
        movielens.fetch(data_dir, [grouplens_zip(tmp_path)])
    assert leftovers(data_dir) == ["ml-100k"]
    assert mine.read_text() == "mine"


@pytest.mark.parametrize("in_the_way", ["link to nothing", "file"])
def test_fetch_refuses_a_target_in_the_way_before_downloading(tmp_path, in_the_way):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = data_dir / "ml-100k"
    if in_the_way == "file":
        target.write_text("mine")
    else:
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(TwoTowerError, match=f"is a {in_the_way}: the download cannot go there"):
        movielens.fetch(data_dir, [grouplens_zip(tmp_path)])
    assert leftovers(data_dir) == ["ml-100k"]


class TakenMeanwhile(movielens.GroupLensZip):
    """Something takes the target's place while the download runs."""

    def fetch(self, target: Path) -> None:
        target.mkdir(parents=True)
        (target / "notes.txt").write_text("mine")
        super().fetch(target)


def test_a_download_that_cannot_take_its_place_leaves_no_staging(tmp_path):
    data_dir = tmp_path / "data"
    good = grouplens_zip(tmp_path)
    source = TakenMeanwhile(url=good.url, md5=good.md5)
    with pytest.raises(TwoTowerError, match="cannot put the download at "):
        movielens.fetch(data_dir, [source])
    assert leftovers(data_dir) == ["ml-100k"]
    assert (data_dir / "ml-100k" / "notes.txt").read_text() == "mine"


def test_fetched_data_gets_the_mode_mkdir_would_give(tmp_path):
    folder = movielens.fetch(tmp_path / "data", [grouplens_zip(tmp_path)])
    mkdir_made = tmp_path / "by-mkdir"
    mkdir_made.mkdir()
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(mkdir_made.stat().st_mode)


SLOW_FETCH = """
import sys, time
from pathlib import Path
from twotower.data import movielens

class Slow(movielens.GroupLensZip):
    def fetch(self, target):
        time.sleep(2)  # the other process asks meanwhile
        super().fetch(target)

source = Slow(url=sys.argv[2], md5=sys.argv[3])
print(movielens.fetched(Path(sys.argv[1]), [source], notify=lambda m: print(m, flush=True)))
"""


def test_two_processes_sharing_a_data_dir_fetch_once(tmp_path):
    """As two ranks of a torchrun group would: the second, started while the first
    fetches, waits for the first's folder instead of fetching beside it."""
    source = grouplens_zip(tmp_path)
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-c", SLOW_FETCH, str(data_dir), source.url, source.md5]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    first = subprocess.Popen(argv, **pipes)
    told = []
    while not (told and told[-1].startswith("fetching it from")):  # it holds the lock now
        told.append(first.stdout.readline())
        assert told[-1], first.stderr.read()[-2000:]
    second = subprocess.run(argv, timeout=120, **pipes)
    rest, err = first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert second.stdout.splitlines() == [str(data_dir / "ml-100k")]  # found, not fetched
    assert rest.splitlines()[-1] == str(data_dir / "ml-100k")
    assert [name for name in leftovers(data_dir) if name != ".ml-100k.lock"] == ["ml-100k"]
