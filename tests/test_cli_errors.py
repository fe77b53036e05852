"""Bad input through the CLI: exit code 1, one ``error:`` line, no traceback, no partial files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import error_line, run, write_interactions

from twotower import artifacts, plugins
from twotower.cli import main
from twotower.config import read_toml
from twotower.errors import TwoTowerError


def only_error_line(code: int, err: str) -> str:
    """As ``error_line``, and stderr holds nothing else."""
    line = error_line(code, err)
    assert err.strip() == line
    return line


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Artifacts of a one-epoch fit on a tiny CSV, made once for the module."""
    root = tmp_path_factory.mktemp("fit")
    csv = write_interactions(root / "tiny.csv")
    data_dir = root / "data"
    argv = ["fit", "--dataset", "files", "--interactions", str(csv), "--data-dir", str(data_dir)]
    code = main([*argv, "--epochs", "1", "--no-progress", "--batch-size", "32", "--json"])
    assert code == 0
    folder = data_dir / "artifacts"
    assert (folder / artifacts.MANIFEST).is_file()
    return folder


@pytest.fixture()
def artifacts_dir(trained, tmp_path) -> Path:
    """A private copy of the trained artifacts that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "artifacts"))


@pytest.fixture()
def csv(tmp_path) -> Path:
    return write_interactions(tmp_path / "tiny.csv")


def fit_args(interactions: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--dataset",
        "files",
        "--interactions",
        str(interactions),
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--no-progress",
        *extra,
    ]


# --- bad data --------------------------------------------------------------------------

JSON_OR_TABLE = pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])


@JSON_OR_TABLE
def test_missing_interactions_file(capsys, tmp_path, output):
    missing = tmp_path / "absent.csv"
    code, out, err = run(capsys, *fit_args(missing, tmp_path / "d"), *output)
    check = only_error_line if output else error_line
    assert check(code, err) == f"error: file not found: {missing}"
    assert out == ""


@JSON_OR_TABLE
def test_missing_column(capsys, tmp_path, output):
    path = tmp_path / "x.csv"
    path.write_text("user,rating,timestamp\n1,5,10\n")
    code, _, err = run(capsys, *fit_args(path, tmp_path / "d"), *output)
    check = only_error_line if output else error_line
    assert check(code, err).startswith(f"error: {path}: missing item column")


def test_named_column_missing(capsys, tmp_path, csv):
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d", "--user-col", "uid", "--json"))
    line = only_error_line(code, err)
    assert line.startswith(f"error: {csv}: no column 'uid' (for user)")


@JSON_OR_TABLE
def test_non_numeric_rating(capsys, tmp_path, csv, output):
    lines = csv.read_text().splitlines()
    lines[5] = "7,3,five,123"  # line 6 of the file
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d"), *output)
    check = only_error_line if output else error_line
    assert check(code, err) == f"error: {csv}: row 6, column 'rating': 'five' is not a number"


@JSON_OR_TABLE
def test_non_numeric_timestamp(capsys, tmp_path, csv, output):
    lines = csv.read_text().splitlines()
    lines[9] = "7,3,5,yesterday"
    csv.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d"), *output)
    check = only_error_line if output else error_line
    assert check(code, err) == (
        f"error: {csv}: row 10, column 'timestamp': 'yesterday' is not a number"
    )


@JSON_OR_TABLE
def test_nothing_left_after_filtering(capsys, tmp_path, csv, output):
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d", "--min-rating", "6"), *output)
    check = only_error_line if output else error_line
    line = check(code, err)
    assert line.startswith("error: nothing left after filtering tiny:")
    assert "rating >= 6.0" in line


def test_failed_fit_writes_no_artifacts(capsys, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user,item,rating,stamp\n1,2,5,10\n")
    data_dir = tmp_path / "data"
    code, _, err = run(capsys, *fit_args(path, data_dir, "--json"))
    assert "missing timestamp column" in only_error_line(code, err)
    assert not (data_dir / "artifacts").exists()
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_failed_fit_leaves_existing_artifacts_alone(capsys, tmp_path, artifacts_dir):
    before = {p.name: p.read_bytes() for p in artifacts_dir.iterdir()}
    path = tmp_path / "x.csv"
    path.write_text("user,item,rating,timestamp\n1,2,bad,10\n")
    argv = fit_args(path, tmp_path / "d", "--artifacts-dir", str(artifacts_dir), "--json")
    code, _, err = run(capsys, *argv)
    assert "column 'rating'" in only_error_line(code, err)
    assert {p.name: p.read_bytes() for p in artifacts_dir.iterdir()} == before
    assert [p.name for p in artifacts_dir.parent.iterdir() if "staging" in p.name] == []


# --- unknown names and bad options ---------------------------------------------------------


def test_unknown_user_encoder_flag_lists_the_choices(capsys, tmp_path, csv):
    with pytest.raises(SystemExit) as exit_info:
        main([*fit_args(csv, tmp_path / "d"), "--user-encoder", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "invalid choice: 'nope'" in err
    names = plugins.user_encoders().names()
    assert names and all(repr(name) in err for name in names)


def test_unknown_retriever_flag_lists_the_choices(capsys, artifacts_dir):
    argv = ["recommend", "--artifacts-dir", str(artifacts_dir), "--user-id", "1"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--retriever", "annoy"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'annoy'" in err
    assert all(repr(name) in err for name in plugins.retrievers().names())


def test_a_mistyped_flag_gets_the_commands_usage_and_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recommend", "--user-id", "1", "--kk", "10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: twotower recommend ")
    said = "twotower recommend: error: unrecognized arguments: --kk 10 (did you mean --k?)"
    assert err.strip().endswith(said)


def test_unknown_user_encoder_in_toml_lists_the_names(capsys, tmp_path, csv):
    toml = tmp_path / "run.toml"
    toml.write_text('user_encoder = "nope"\nepochs = 1\n')
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d", "--config", str(toml)))
    line = only_error_line(code, err)
    names = ", ".join(plugins.user_encoders().names())
    assert line == (
        f"error: unknown user encoder 'nope'; available: {names} "
        f"(settings from {toml} and the flags)"
    )
    assert not (tmp_path / "d").exists()


def test_a_setting_spelled_twice_in_toml_is_refused(capsys, tmp_path, csv):
    toml = tmp_path / "run.toml"
    toml.write_text("num-layers = 1\nnum_layers = 3\n")
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d", "--config", str(toml)))
    assert only_error_line(code, err) == (
        f"error: {toml}: num_layers is given twice (as 'num_layers' and spelled otherwise)"
    )


def test_plugin_options_in_toml_may_be_spelled_with_dashes_as_set_takes_them(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "synthetic"\n[extra]\nsynthetic-num-users = 50\n')
    assert read_toml(toml)["extra"] == {"synthetic_num_users": 50}
    toml.write_text("[extra]\nsynthetic-num-users = 50\nsynthetic_num_users = 60\n")
    with pytest.raises(TwoTowerError, match="synthetic_num_users is given twice"):
        read_toml(toml)


def test_unknown_key_in_toml(capsys, tmp_path, csv):
    toml = tmp_path / "run.toml"
    toml.write_text("learning_rate = 0.1\n")
    code, _, err = run(capsys, *fit_args(csv, tmp_path / "d", "--config", str(toml)))
    assert only_error_line(code, err) == f"error: {toml}: unknown key(s) learning_rate"


def test_unknown_user_id(capsys, artifacts_dir):
    argv = ["recommend", "--artifacts-dir", str(artifacts_dir), "--user-id", "nope"]
    code, out, err = run(capsys, *argv)
    line = only_error_line(code, err)
    assert line.startswith("error: unknown user id 'nope' (30 known users, e.g. 1, 2, 3)")
    assert out == ""


@pytest.mark.parametrize("where", [["--artifacts-dir", "elsewhere"], ["--data-dir", "d"]])
def test_recommend_takes_one_model_not_a_bundle_and_artifacts(capsys, tmp_path, where):
    """``--bundle`` with a flag naming artifacts is refused, not one of them silently ignored."""
    argv = ["recommend", "--bundle", tmp_path / "bundle", *where, "--user-id", "1"]
    code, _, err = run(capsys, *argv)
    assert (
        only_error_line(code, err)
        == f"error: --bundle and {where[0]} both say which model to ask: give one"
    )


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_must_be_positive(capsys, artifacts_dir, k):
    argv = ["recommend", "--artifacts-dir", str(artifacts_dir), "--user-id", "1", "--k", k]
    code, _, err = run(capsys, *argv)
    assert only_error_line(code, err) == f"error: k must be a positive integer, not {k}"


def test_recommend_works_on_the_fixture(capsys, artifacts_dir):
    """The artifacts the error tests damage are good to begin with."""
    argv = ["recommend", "--artifacts-dir", str(artifacts_dir), "--user-id", "1", "--k", "3"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["user_id"] == "1"
    assert [item["rank"] for item in result["items"]] == [1, 2, 3]
    history = json.loads((artifacts_dir / artifacts.USER_HISTORIES).read_text())["1"]
    assert not {item["item_id"] for item in result["items"]} & set(history)


# --- damaged artifacts -----------------------------------------------------------------------


def recommend(capsys, folder: Path) -> str:
    code, _, err = run(capsys, "recommend", "--artifacts-dir", str(folder), "--user-id", "1")
    return only_error_line(code, err)


def test_artifacts_from_an_incompatible_version(capsys, artifacts_dir):
    manifest_path = artifacts_dir / artifacts.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = artifacts.FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: {manifest_path}: artifacts format version ")
    assert f"reads version {artifacts.FORMAT_VERSION}" in line


def test_corrupted_artifact_is_named(capsys, artifacts_dir):
    path = artifacts_dir / artifacts.ITEM_EMBEDDINGS
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0x01  # one bit of the last float
    path.write_bytes(bytes(payload))
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: artifacts file {path} is corrupted")


def test_a_config_that_does_not_fit_the_weights_is_named(capsys, artifacts_dir):
    # edited by hand and its checksum recorded again: the files agree with the manifest,
    # not with each other
    path = artifacts_dir / artifacts.CONFIG
    config = json.loads(path.read_text())
    config["embedding_dim"] *= 2
    path.write_text(json.dumps(config))
    manifest_path = artifacts_dir / artifacts.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][artifacts.CONFIG] = artifacts.sha256_of(path)
    manifest_path.write_text(json.dumps(manifest))
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: {artifacts_dir / artifacts.MODEL} does not fit {path} (")
    assert line.endswith("the files are not from one fit")


def resealed(folder: Path, name: str) -> Path:
    """Record file ``name``'s checksum again after an edit: the manifest vouches for it."""
    manifest_path = folder / artifacts.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = artifacts.sha256_of(folder / name)
    manifest_path.write_text(json.dumps(manifest))
    return folder / name


def saved_model(**changes):
    def change(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        torch.save({**checkpoint, **changes}, path)

    return change


MODEL_EDITS = {
    "truncated": (
        lambda path: path.write_bytes(path.read_bytes()[:300]),
        "cannot be read as a twotower model (RuntimeError: ",
    ),
    "another object": (lambda path: torch.save({"x": 1}, path), "(no state_dict)"),
    "negative items": (saved_model(num_items=-5), "'num_items': -5"),
    "huge catalog": (saved_model(num_items=10**12), "'num_items': 1000000000000"),
    "huge genres": (saved_model(num_genres=10**9), "'num_genres': 1000000000"),
    "weights of strings": (saved_model(state_dict={"a": "b"}), "does not fit"),
}


@pytest.mark.parametrize("edit", MODEL_EDITS)
def test_a_model_file_that_is_not_what_fit_writes_is_named(capsys, artifacts_dir, edit):
    change, said = MODEL_EDITS[edit]
    change(artifacts_dir / artifacts.MODEL)
    path = resealed(artifacts_dir, artifacts.MODEL)
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: {path} ") and said in line, line


HISTORY_EDITS = {
    "a user without a history": (lambda h: h.pop(next(iter(h))), "has no history"),
    "an empty history": (lambda h: h.update({next(iter(h)): []}), "has no history"),
    "a user the mappings lack": (lambda h: h.update({"stranger": h[next(iter(h))]}), "'stranger'"),
}


@pytest.mark.parametrize("edit", HISTORY_EDITS)
def test_histories_that_do_not_match_the_mappings_are_named(capsys, artifacts_dir, edit):
    change, said = HISTORY_EDITS[edit]
    path = artifacts_dir / artifacts.USER_HISTORIES
    histories = json.loads(path.read_text())
    change(histories)
    path.write_text(json.dumps(histories))
    resealed(artifacts_dir, artifacts.USER_HISTORIES)
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: {path}: ") and said in line, line
    assert line.endswith("the files are not from one fit")


def test_corrupted_manifest(capsys, artifacts_dir):
    path = artifacts_dir / artifacts.MANIFEST
    path.write_text('{"format_version": 1, "files": {')
    assert recommend(capsys, artifacts_dir).startswith(f"error: {path} is corrupted")


@pytest.mark.parametrize("name", [artifacts.MAPPINGS, artifacts.MODEL, "hnsw_index.bin"])
def test_missing_artifact_file_is_named(capsys, artifacts_dir, name):
    (artifacts_dir / name).unlink()
    line = recommend(capsys, artifacts_dir)
    assert line == f"error: artifacts file {artifacts_dir / name} is missing"


def test_missing_manifest(capsys, artifacts_dir):
    (artifacts_dir / artifacts.MANIFEST).unlink()
    line = recommend(capsys, artifacts_dir)
    assert line.startswith(f"error: {artifacts_dir / artifacts.MANIFEST} is missing")


def test_no_artifacts_folder(capsys, tmp_path):
    line = recommend(capsys, tmp_path / "nowhere")
    assert line.startswith(f"error: no artifacts folder at {tmp_path / 'nowhere'}")


def test_evaluate_checks_artifacts_too(capsys, artifacts_dir):
    path = artifacts_dir / artifacts.MODEL
    path.write_bytes(path.read_bytes()[:-1])
    code, _, err = run(capsys, "evaluate", "--artifacts-dir", str(artifacts_dir))
    assert only_error_line(code, err).startswith(f"error: artifacts file {path} is corrupted")


def test_evaluate_says_how_to_find_data_that_moved(capsys, tmp_path):
    csv = write_interactions(tmp_path / "tiny.csv")
    fitted = tmp_path / "fitted"
    argv = ["fit", "--interactions", str(csv), "--artifacts-dir", str(fitted), "--epochs", "1"]
    assert main([*argv, "--no-progress", "--json"]) == 0
    capsys.readouterr()
    csv.rename(tmp_path / "moved.csv")
    code, _, err = run(capsys, "evaluate", "--artifacts-dir", str(fitted))
    assert only_error_line(code, err) == (
        f"error: file not found: {csv} (the data {fitted} was fitted on; if it moved, point "
        "evaluate at it with --data-dir, --interactions or --items)"
    )


# --- the real console script ---------------------------------------------------------------


def console_script(name: str) -> str:
    script = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert script is not None, f"console script {name!r} is not installed"
    return script


def test_console_script_reports_one_line_and_exit_code(artifacts_dir):
    path = artifacts_dir / artifacts.ITEM_EMBEDDINGS
    payload = bytearray(path.read_bytes())
    payload[-2] ^= 0xFF
    path.write_bytes(bytes(payload))
    command = [console_script("twotower"), "recommend", "--artifacts-dir", str(artifacts_dir)]
    result = subprocess.run(
        [*command, "--user-id", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TWOTOWER_PLUGINS": ""},
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: artifacts file {path} is corrupted" + (
        " (sha256 does not match manifest)"
    )


def test_a_device_this_machine_lacks_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["fit", "--dataset", "synthetic", "--data-dir", str(tmp_path), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: device 'cuda' is not usable here")
    assert "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()
