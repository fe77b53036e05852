"""The torch-free serving runtime over an ONNX bundle, and ``recommend --bundle``.

One tiny model is fitted and exported once for the module; the answers are
compared with the PyTorch path (``twotower.load(...).recommend``) item for
item, and damaged copies of the bundle must fail with one clear error.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import flip_a_byte, run, run_script

from twotower import TwoTowerConfig, artifacts
from twotower.api import load
from twotower.cli import main
from twotower.errors import TwoTowerError
from twotower.export.bundle import export_bundle
from twotower.serving import load_bundle
from twotower.serving.live import LiveBundle

RETRIEVERS = ["exact", "hnsw"]
NUM_ITEMS = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("serving") / "data"
    argv = [
        "fit", "--dataset", "synthetic", "--set", "synthetic_num_users=60",
        "--set", f"synthetic_num_items={NUM_ITEMS}", "--epochs", "1",
        "--max-history-len", "8", "--data-dir", str(data_dir), "--no-progress", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    return data_dir / "artifacts"


@pytest.fixture(scope="module")
def bundle_dir(trained, tmp_path_factory) -> Path:
    folder, _ = export_bundle(trained, tmp_path_factory.mktemp("bundle") / "onnx", format="onnx")
    return folder


@pytest.fixture(scope="module")
def recommender(trained):
    return load(trained)


@pytest.fixture(scope="module")
def bundles(bundle_dir) -> dict:
    return {name: load_bundle(bundle_dir, retriever=name) for name in RETRIEVERS}


@pytest.fixture(scope="module")
def users(recommender) -> list[str]:
    return list(recommender.user_ids)


def ids(recommendations) -> list[str]:
    return [r.item_id for r in recommendations]


def scores(recommendations) -> list[float]:
    return [r.score for r in recommendations]


# --- no torch in the serving process ---------------------------------------------------

SERVE_SCRIPT = """
import json, sys
from twotower.serving import load_bundle

request = json.loads(sys.stdin.read())
answer = {}
ids = lambda recommendations: [r.item_id for r in recommendations]
for retriever in ("hnsw", "exact"):
    bundle = load_bundle(request["bundle"], retriever=retriever)
    answer[retriever] = {
        "recommend": ids(bundle.recommend(request["user"], k=10)),
        "history": ids(bundle.recommend_history(request["items"], k=10)),
        "batch": [ids(row) for row in bundle.recommend_batch(request["users"], k=5)],
    }
answer["torch_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert "torch" not in sys.modules
print(json.dumps(answer))
"""


def test_serving_process_never_imports_torch(bundles, bundle_dir, users, recommender, tmp_path):
    user = users[0]
    items = recommender.histories[users[1]][:5]
    request = {"bundle": str(bundle_dir), "user": user, "items": items, "users": users[:4]}
    answer = run_script(SERVE_SCRIPT, request, tmp_path)
    assert answer["torch_modules"] == []
    for name, bundle in bundles.items():
        assert answer[name]["recommend"] == ids(bundle.recommend(user, k=10))
        assert answer[name]["history"] == ids(bundle.recommend_history(items, k=10))
        assert answer[name]["batch"] == [ids(r) for r in bundle.recommend_batch(users[:4], k=5)]
        assert len(answer[name]["recommend"]) == 10


# --- the same answers as PyTorch, as one batch, and from many threads ------------------


@pytest.mark.parametrize("retriever", RETRIEVERS)
@pytest.mark.parametrize("exclude_seen", [True, False], ids=["exclude-seen", "keep-seen"])
def test_recommend_equals_pytorch(bundles, recommender, users, retriever, exclude_seen):
    bundle = bundles[retriever]
    for user in users:
        got = bundle.recommend(user, k=10, exclude_seen=exclude_seen)
        expected = recommender.recommend(user, k=10, exclude_seen=exclude_seen, retriever=retriever)
        assert ids(got) == ids(expected), user
        assert [r.rank for r in got] == list(range(1, 11))
        assert [(r.title, r.genres) for r in got] == [(r.title, r.genres) for r in expected]
        np.testing.assert_allclose(scores(got), scores(expected), atol=1e-5)


def test_both_entry_points_have_the_same_defaults(trained, bundle_dir, recommender):
    """One core: the fit's retriever setting is the default of both, and both open it."""
    bundle = load_bundle(bundle_dir)
    assert recommender.config.retriever == bundle.config.retriever == "exact"
    assert recommender.default_retriever == bundle.default_retriever == "exact"
    assert type(recommender.retriever().index) is type(bundle.retriever().index)
    for name in RETRIEVERS:
        assert load(trained, retriever=name).default_retriever == name
        assert load_bundle(bundle_dir, retriever=name).default_retriever == name
    user = recommender.user_ids[0]
    assert ids(bundle.recommend(user)) == ids(recommender.recommend(user))


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_both_entry_points_answer_batches_and_histories_alike(
    bundles, recommender, users, retriever
):
    """Batch and anonymous-history queries through PyTorch equal those through the bundle."""
    bundle = bundles[retriever]
    got = bundle.recommend_batch(users, k=10)
    expected = recommender.recommend_batch(users, k=10, retriever=retriever)
    assert [ids(row) for row in got] == [ids(row) for row in expected]
    np.testing.assert_allclose(
        [scores(row) for row in got], [scores(row) for row in expected], atol=1e-5
    )
    for history in ([], recommender.histories[users[1]][:3], recommender.histories[users[2]]):
        for exclude_seen in (True, False):
            got = bundle.recommend_history(history, k=10, exclude_seen=exclude_seen)
            expected = recommender.recommend_history(
                history, k=10, exclude_seen=exclude_seen, retriever=retriever
            )
            assert ids(got) == ids(expected)
            np.testing.assert_allclose(scores(got), scores(expected), atol=1e-5)
    # a query may name another retriever than the default; exact gives the same here
    assert ids(bundle.recommend(users[0], retriever="exact")) == ids(
        recommender.recommend(users[0], retriever="exact")
    )


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_batch_equals_one_by_one(bundles, users, retriever):
    bundle = bundles[retriever]
    batch = bundle.recommend_batch(users, k=10)
    assert len(batch) == len(users)
    for user, row in zip(users, batch, strict=True):
        single = bundle.recommend(user, k=10)
        assert ids(row) == ids(single), user
        np.testing.assert_allclose(scores(row), scores(single), atol=1e-6)
    # a batch may name a user twice, in any order
    twice = bundle.recommend_batch([users[3], users[0], users[3]], k=10)
    assert ids(twice[0]) == ids(twice[2]) == ids(batch[3])
    assert ids(twice[1]) == ids(batch[0])


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_threads_give_sequential_answers(bundles, recommender, users, retriever):
    bundle = bundles[retriever]
    calls = []
    for user in users:
        calls.append(("recommend", user))
        calls.append(("history", tuple(recommender.histories[user][:3])))
    calls.extend(("batch", tuple(users[i : i + 4])) for i in range(0, len(users), 4))

    def call(request):
        kind, arg = request
        if kind == "recommend":
            return bundle.recommend(arg, k=10)
        if kind == "history":
            return bundle.recommend_history(list(arg), k=10)
        return bundle.recommend_batch(list(arg), k=10)

    sequential = [call(request) for request in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(call, calls)) == sequential


# --- what is excluded, how many come back ------------------------------------------------


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_exclude_seen(bundles, recommender, users, retriever):
    bundle = bundles[retriever]
    catalog = len(bundle.item_ids)
    for user in users[:10]:
        seen = set(recommender.histories[user])
        unseen = catalog - len(seen)
        assert 0 < unseen < catalog
        for k in (10, unseen, unseen + 5, 1000):
            got = ids(bundle.recommend(user, k=k, exclude_seen=True))
            assert not seen & set(got), user
            assert len(got) == len(set(got)) == min(k, unseen)
            assert [r.rank for r in bundle.recommend(user, k=k)] == list(range(1, len(got) + 1))
        everything = ids(bundle.recommend(user, k=1000, exclude_seen=False))
        assert sorted(everything) == sorted(bundle.item_ids)
        # only unseen items: the same ranking as the whole catalog with the seen ones left out
        ranked = [item for item in everything if item not in seen]
        assert ids(bundle.recommend(user, k=unseen)) == ranked


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_recommend_history(bundles, recommender, users, retriever):
    bundle = bundles[retriever]
    history = recommender.histories[users[2]]
    got = bundle.recommend_history(history, k=1000)
    assert not set(history) & set(ids(got))
    assert len(got) == len(bundle.item_ids) - len(set(history))
    assert len(bundle.recommend_history(history, k=1000, exclude_seen=False)) == NUM_ITEMS
    assert ids(bundle.recommend_history(tuple(history), k=10)) == ids(got[:10])
    # the cold user: no history at all
    cold = bundle.recommend_history([], k=10)
    assert len(cold) == 10
    assert np.isfinite(scores(cold)).all()
    assert cold == bundle.recommend_history([], k=10, exclude_seen=False)


def test_recommend_history_equals_the_cold_user_in_pytorch(bundles, recommender, users):
    """An anonymous history is user index 0 with those items, as the PyTorch model sees it."""
    import torch

    from twotower.data.padding import pad_left

    bundle = bundles["exact"]
    for user in users[:5]:
        history = recommender.histories[user][-4:]
        indexes = np.array([recommender.item_index[i] for i in history])
        ids_, mask = pad_left([indexes], recommender.config.max_history_len)
        with torch.no_grad():
            vector = recommender.towers.model.encode_users(
                torch.tensor([0]), torch.as_tensor(ids_), torch.as_tensor(mask)
            ).numpy()
        scores_ = (vector @ recommender.item_vectors.T)[0]
        scores_[indexes - 1] = -np.inf
        order = np.lexsort((np.arange(len(scores_)), -scores_))[:10]
        assert ids(bundle.recommend_history(history, k=10)) == [
            recommender.item_ids[i] for i in order
        ]


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_bad_requests(bundles, users, retriever):
    bundle = bundles[retriever]
    with pytest.raises(TwoTowerError, match=rf"unknown user id 'nobody' \({len(users)} known"):
        bundle.recommend("nobody")
    with pytest.raises(TwoTowerError, match="unknown user id 'nobody'"):
        bundle.recommend_batch([users[0], "nobody"])
    with pytest.raises(TwoTowerError, match="unknown item id"):
        bundle.recommend_history([bundle.item_ids[0], "no-such-item"])
    for k in (0, -1, 2.5, True):
        with pytest.raises(TwoTowerError, match="k must be a positive integer"):
            bundle.recommend(users[0], k=k)
        with pytest.raises(TwoTowerError, match="k must be a positive integer"):
            bundle.recommend_history([bundle.item_ids[0]], k=k)
        with pytest.raises(TwoTowerError, match="k must be a positive integer"):
            bundle.recommend_batch(users[:2], k=k)
    for flag in ("no", 0, None):
        with pytest.raises(
            TwoTowerError, match=f"exclude_seen must be True or False, not {flag!r}"
        ):
            bundle.recommend(users[0], exclude_seen=flag)


@pytest.mark.parametrize("threads", [0, -1, None, 1.5, True, 1025])
def test_a_thread_count_below_one_or_not_whole_is_refused(
    exported_bundle, fitted_artifacts, threads
):
    for load_folder in (
        lambda: load_bundle(exported_bundle, threads=threads),
        lambda: load(fitted_artifacts, threads=threads),
    ):
        with pytest.raises(
            TwoTowerError, match=f"threads must be a whole number from 1 to 1024, not {threads!r}"
        ):
            load_folder()


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_request_edges(bundles, recommender, users, retriever):
    bundle = bundles[retriever]
    assert bundle.recommend_batch([]) == []  # an empty batch: an empty answer
    everything = bundle.recommend(users[0], k=10**12)  # a huge k asks for every item left
    unseen = NUM_ITEMS - len(set(recommender.histories[users[0]]))
    assert len(everything) == unseen
    assert ids(bundle.recommend(users[0], k=np.int64(3))) == ids(everything[:3])
    with pytest.raises(TwoTowerError, match="item_ids must be a list of ids, not str '50'"):
        bundle.recommend_history("50")  # not the items '5' and '0'
    with pytest.raises(TwoTowerError, match="user_ids must be a list of ids, not str"):
        bundle.recommend_batch(users[0])


def test_arguments_of_another_type_are_refused_in_one_line(recommender, users, bundle_dir):
    item = recommender.item_ids[0]
    calls = [
        (lambda: recommender.recommend_history({item}), "item_ids must be a list of ids, not set"),
        (lambda: recommender.recommend_batch({users[0]: 1}), "user_ids must be a list of ids"),
        (lambda: recommender.recommend([users[0]]), "user_id must be an id (a string or an"),
        (lambda: recommender.recommend(True), "user_id must be an id (a string or an integer)"),
        (lambda: recommender.recommend_batch([users[0], None]), "user_ids[1] must be an id"),
        (lambda: recommender.recommend_history([item, 1.0]), "item_ids[1] must be an id"),
        (lambda: recommender.recommend(users[0], retriever=["hnsw"]), "retriever must be a"),
        (lambda: recommender.recommend(users[0], retriever=""), "retriever must be a"),
        (lambda: load_bundle(bundle_dir, retriever=0), "retriever must be a retriever's name"),
        (lambda: load(None), "expected the path of a folder, not NoneType None"),
        (lambda: load_bundle(None), "expected the path of a folder, not NoneType None"),
        (lambda: LiveBundle(None), "expected the path of a folder, not NoneType None"),
        (lambda: load_bundle("/" + "x" * 300), "(File name too long)"),
        (lambda: load("/" + "x" * 300), "(File name too long)"),
        (lambda: TwoTowerConfig.from_dict(None), "config: expected a table, not NoneType"),
    ]
    for call, says in calls:
        with pytest.raises(TwoTowerError, match=re.escape(says)):
            call()


def test_pytorch_path_takes_the_same_requests(recommender, users):
    unseen = NUM_ITEMS - len(set(recommender.histories[users[0]]))
    assert len(recommender.recommend(users[0], k=10**12)) == unseen
    assert recommender.recommend_batch([]) == []
    with pytest.raises(TwoTowerError, match="unknown user id 'nobody'"):
        recommender.recommend_batch([users[0], "nobody"])
    with pytest.raises(TwoTowerError, match="item_ids must be a list of ids, not str '50'"):
        recommender.recommend_history("50")
    with pytest.raises(TwoTowerError, match="unknown retriever 'annoy'"):
        recommender.recommend(users[0], retriever="annoy")


# --- the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retriever",
    [[], ["--retriever", "exact"], ["--retriever", "hnsw"]],
    ids=["default", *RETRIEVERS],
)
def test_cli_recommend_bundle_json(capsys, trained, bundle_dir, users, retriever):
    user = users[5]
    common = ["recommend", "--user-id", user, "--k", "10", "--json", *retriever]
    code, served, err = run(capsys, *common, "--bundle", bundle_dir)
    assert code == 0, err
    code, reference, err = run(capsys, *common, "--artifacts-dir", trained)
    assert code == 0, err
    served, reference = json.loads(served), json.loads(reference)
    assert set(served) == {"user_id", "items"} and served["user_id"] == user
    assert len(served["items"]) == 10
    for item in served["items"]:
        assert set(item) == {"rank", "item_id", "title", "genres", "score"}
    strip = [{k: v for k, v in item.items() if k != "score"} for item in served["items"]]
    assert strip == [{k: v for k, v in item.items() if k != "score"} for item in reference["items"]]
    np.testing.assert_allclose(
        [i["score"] for i in served["items"]], [i["score"] for i in reference["items"]], atol=1e-5
    )


def test_cli_recommend_bundle_table(capsys, bundle_dir, users):
    code, out, err = run(capsys, "recommend", "--bundle", bundle_dir, "--user-id", users[0])
    assert code == 0, err
    assert f"top 10 for user {users[0]}" in out
    argv = ["recommend", "--bundle", bundle_dir, "--user-id", users[0], "--k", "100000"]
    code, out, err = run(capsys, *argv)
    unseen = len(load_bundle(bundle_dir).recommend(users[0], k=100000))
    assert code == 0 and f"top {unseen} for user {users[0]}" in out and unseen < 100000
    code, _, err = run(capsys, "recommend", "--bundle", bundle_dir, "--user-id", "nobody")
    assert code == 1 and err.startswith("error: unknown user id 'nobody'")


# --- bad bundles -------------------------------------------------------------------------


def edit_manifest(folder: Path, change) -> None:
    path = folder / artifacts.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def remove_items(folder: Path) -> str:
    (folder / artifacts.ITEMS).unlink()
    return f"bundle file {folder / artifacts.ITEMS} is missing"


def remove_index(folder: Path) -> str:
    (folder / "hnsw_index.bin").unlink()
    return f"bundle file {folder / 'hnsw_index.bin'} is missing"


def remove_manifest(folder: Path) -> str:
    (folder / artifacts.MANIFEST).unlink()
    return f"{folder / artifacts.MANIFEST} is missing: {folder} is not a complete bundle folder"


def future_version(folder: Path) -> str:
    edit_manifest(folder, lambda m: m.update(format_version=99))
    return (
        f"{folder / artifacts.MANIFEST}: bundle format version 99, but this twotower reads "
        "version 1; re-create them with this version"
    )


def rename_recorded_input(folder: Path) -> str:
    def change(manifest):
        manifest["graphs"]["user_tower"]["inputs"][2]["name"] = "mask"

    edit_manifest(folder, change)
    return f"bundle graph {folder / 'user_tower.onnx'} does not match manifest.json"


def swap_graphs(folder: Path) -> str:
    """The item graph in the user graph's place, its checksum fixed: only the graph check fails."""
    shutil.copyfile(folder / "item_tower.onnx", folder / "user_tower.onnx")
    digest = hashlib.sha256((folder / "user_tower.onnx").read_bytes()).hexdigest()
    edit_manifest(folder, lambda m: m["files"].update({"user_tower.onnx": digest}))
    return f"bundle graph {folder / 'user_tower.onnx'} does not match manifest.json"


def unreadable_graph(folder: Path) -> str:
    """Not ONNX at all, its checksum fixed: onnxruntime's refusal becomes one clear error."""
    (folder / "user_tower.onnx").write_bytes(b"not an onnx graph")
    digest = hashlib.sha256(b"not an onnx graph").hexdigest()
    edit_manifest(folder, lambda m: m["files"].update({"user_tower.onnx": digest}))
    return f"bundle graph {folder / 'user_tower.onnx'} cannot be loaded"


def resign(folder: Path, name: str) -> None:
    """Record ``name``'s new checksum, as a script that edits a bundle by hand might."""
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    edit_manifest(folder, lambda m: m["files"].update({name: digest}))


def another_format(folder: Path) -> str:
    """The manifest names a format that did not write the files."""
    edit_manifest(folder, lambda m: m.update(format="torchscript"))
    return f"bundle {folder} cannot be loaded as the 'torchscript' format its manifest.json names"


def unknown_history_item(folder: Path) -> str:
    path = folder / artifacts.USER_HISTORIES
    histories = json.loads(path.read_text())
    user = next(iter(histories))
    histories[user].append("NOPE")
    path.write_text(json.dumps(histories))
    resign(folder, artifacts.USER_HISTORIES)
    return f"{path}: user {user!r} has item 'NOPE', which mappings.json does not list"


def items_out_of_order(folder: Path) -> str:
    """Two rows of items.json swapped: each answer would pair an id with another's title."""
    path = folder / artifacts.ITEMS
    table = json.loads(path.read_text())
    table["items"][0], table["items"][1] = table["items"][1], table["items"][0]
    path.write_text(json.dumps(table))
    resign(folder, artifacts.ITEMS)
    first = table["items"][0]["item_id"]
    return f"{folder}: row 0 of items.json is item {first!r} but mappings.json lists"


def no_users(folder: Path) -> str:
    """A bundle no fit writes: no user to ask (its check asked the first one)."""
    path = folder / artifacts.MAPPINGS
    path.write_text(json.dumps({**json.loads(path.read_text()), "users": []}))
    resign(folder, artifacts.MAPPINGS)
    return f"{path} does not hold "


def fewer_item_vectors(folder: Path) -> str:
    path = folder / artifacts.ITEM_EMBEDDINGS
    np.save(path, np.load(path, allow_pickle=False)[:10])
    resign(folder, artifacts.ITEM_EMBEDDINGS)
    return f"{folder}: item_embeddings.npy has 10 rows"


def index_of_other_vectors(folder: Path) -> str:
    """The HNSW index read as 32-dimensional: it would answer, with wrong scores."""
    path = folder / "hnsw_index.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dim": 32}))
    resign(folder, "hnsw_index.json")
    return f"the hnsw index in {folder} does not hold the folder's item vectors"


def truncated_index(folder: Path) -> str:
    path = folder / "hnsw_index.bin"
    path.write_bytes(path.read_bytes()[:1000])
    resign(folder, "hnsw_index.bin")
    return f"the hnsw index in {folder} cannot be loaded (RuntimeError: "


def rewritten(name: str, content: bytes, says: str):
    """A damage writing ``content`` over file ``name``, its checksum recorded anew: bytes the
    manifest vouches for, but not what twotower writes there."""

    def damage(folder: Path) -> str:
        (folder / name).write_bytes(content)
        resign(folder, name)
        return f"{folder / name} {says}"

    damage.__name__ = f"malformed_{name.replace('.', '_')}"
    return damage


MALFORMED = [
    rewritten(
        artifacts.ITEMS, b'{"genres": []}', 'does not hold {"genres": [...], "items": [{"item_id"'
    ),
    rewritten(artifacts.MAPPINGS, b"not json", "cannot be read (JSONDecodeError: "),
    rewritten(artifacts.USER_HISTORIES, b"[]", "does not hold {user_id: [item_id, ...]}"),
    rewritten(artifacts.ITEM_EMBEDDINGS, b"garbage", "cannot be read (ValueError: "),
    rewritten(artifacts.CONFIG, b'["epochs"]', "does not hold settings, as twotower writes it"),
]

DAMAGES = [
    *MALFORMED,
    another_format,
    unknown_history_item,
    items_out_of_order,
    no_users,
    fewer_item_vectors,
    index_of_other_vectors,
    truncated_index,
    remove_items,
    remove_index,
    remove_manifest,
    flip_a_byte,
    future_version,
    rename_recorded_input,
    swap_graphs,
    unreadable_graph,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_bad_bundle(capsys, bundle_dir, users, tmp_path, damage):
    folder = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    expected = damage(folder)
    with pytest.raises(TwoTowerError) as error:
        load_bundle(folder, retriever="hnsw")  # opens the saved index too
    message = str(error.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    argv = ("recommend", "--bundle", folder, "--user-id", users[0], "--retriever", "hnsw")
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert "Traceback" not in err
    assert err.strip() == f"error: {message}"


def test_bundle_folder_missing(capsys, tmp_path, users):
    missing = tmp_path / "absent"
    with pytest.raises(TwoTowerError, match=f"no bundle folder at {missing}"):
        load_bundle(missing)
    code, _, err = run(capsys, "recommend", "--bundle", missing, "--user-id", users[0])
    assert code == 1 and err.startswith(f"error: no bundle folder at {missing}")


def test_a_folder_replaced_while_it_loads_is_refused(exported_bundle, tmp_path, monkeypatch):
    """A swap between reading the towers and the item vectors (what `export --out` does to
    a served folder) would give an answer of two bundles, each file passing its checksum."""
    from twotower.serving import runtime

    live, other = tmp_path / "live", tmp_path / "other"
    shutil.copytree(exported_bundle, live)
    shutil.copytree(exported_bundle, other)
    check_graphs = runtime.check_graphs

    def swapped_after(folder, manifest, towers):
        check_graphs(folder, manifest, towers)
        live.rename(tmp_path / "previous")
        other.rename(live)

    monkeypatch.setattr(runtime, "check_graphs", swapped_after)
    with pytest.raises(TwoTowerError) as refused:
        load_bundle(live)
    assert str(refused.value) == (
        f"{live} was replaced (by a fit or an export) while it was read; load it again"
    )


def test_an_index_is_not_opened_from_a_folder_replaced_since_the_load(exported_bundle, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(exported_bundle, live)
    bundle = load_bundle(live, retriever="exact")
    user = bundle.user_ids[0]
    before = ids(bundle.recommend(user, retriever="exact"))
    live.rename(tmp_path / "previous")
    shutil.copytree(exported_bundle, live)
    with pytest.raises(TwoTowerError, match=r"was replaced .* since it was loaded; load it again"):
        bundle.recommend(user, retriever="hnsw")
    assert ids(bundle.recommend(user, retriever="exact")) == before  # what it holds still answers


def test_the_genres_of_an_answer_are_the_caller_s_own(bundles, users):
    bundle = bundles["exact"]
    answer = bundle.recommend(users[0], k=1)[0]
    answer.genres.append("Edited")
    assert "Edited" not in bundle.recommend(users[0], k=1)[0].genres


def test_tables_and_arrays_of_other_shapes_are_refused_as_id_lists(recommender, users):
    item = recommender.item_ids[0]
    for ids_given, kind in ((np.array(item), "ndarray"), (np.array([[item]]), "ndarray")):
        with pytest.raises(TwoTowerError, match=f"item_ids must be a list of ids, not {kind}"):
            recommender.recommend_history(ids_given)
    import pandas as pd

    table = pd.DataFrame({item: [1, 0]})  # iterating it would give its column names
    with pytest.raises(TwoTowerError, match="item_ids must be a list of ids, not DataFrame"):
        recommender.recommend_history(table)
    assert len(recommender.recommend_history(pd.Series([item]), k=2)) == 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads in /proc")
def test_threads_size_the_user_tower_only(exported_bundle):
    """The item tower runs when a bundle is checked, not per request: it keeps one thread
    (it had a pool of its own as large as the user tower's)."""

    def os_threads() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Threads:"))[8:])

    before = os_threads()
    bundle = load_bundle(exported_bundle, threads=8)
    assert os_threads() - before <= 8  # the user tower's pool: 7 threads beside the caller
    assert bundle.recommend(bundle.user_ids[0], k=3)
