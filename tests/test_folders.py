"""Folders are never clobbered, manifests are schema-checked, one run writes a target at a time.

Each test works on copies of one tiny fit and its export (conftest.py), and
every refusal must leave every folder byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import error_line, refused, registering, run, snapshot, synthetic_fit

from twotower import artifacts
from twotower.data.synthetic import load as load_synthetic


@pytest.fixture()
def folders(fitted_artifacts, exported_bundle, tmp_path) -> tuple[Path, Path]:
    """Private copies of the artifacts and the bundle, side by side in tmp_path."""
    return (
        Path(shutil.copytree(fitted_artifacts, tmp_path / "artifacts")),
        Path(shutil.copytree(exported_bundle, tmp_path / "bundle")),
    )


# --- never over another kind, never over what a command reads ---------------------------


def test_export_refuses_to_replace_the_artifacts_it_reads(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    line = refused(
        capsys, tmp_path, "export", "--artifacts-dir", artifacts_dir, "--out", artifacts_dir
    )
    assert line.endswith("which this command reads; choose another folder")


def test_export_refuses_to_write_inside_the_artifacts_it_reads(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    inside = artifacts_dir / "bundle"
    line = refused(capsys, tmp_path, "export", "--artifacts-dir", artifacts_dir, "--out", inside)
    assert line.startswith(f"error: {inside} would overwrite {artifacts_dir}")


def test_export_refuses_to_replace_an_artifacts_folder(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    other = Path(shutil.copytree(artifacts_dir, tmp_path / "other"))
    line = refused(capsys, tmp_path, "export", "--artifacts-dir", artifacts_dir, "--out", other)
    assert line == (
        f"error: {other} is an artifacts folder, and `twotower export` writes a bundle; "
        "choose another folder"
    )


def test_fit_refuses_to_replace_a_bundle(capsys, tmp_path, folders):
    _, bundle = folders
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(bundle))
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith(f"error: {bundle} is a bundle, and `twotower fit` writes an artifacts")


def test_fit_refuses_a_folder_holding_files_it_did_not_write(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    (artifacts_dir / "notes.txt").write_text("mine")
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(artifacts_dir))
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith(f"error: {artifacts_dir} holds files twotower did not write (notes.txt)")


def test_no_folder_is_written_inside_a_twotower_folder(capsys, tmp_path, folders):
    """Its manifest lists every file: one more folder in it breaks its checksum check."""
    artifacts_dir, bundle = folders
    other = Path(shutil.copytree(artifacts_dir, tmp_path / "other"))
    before = snapshot(tmp_path)
    export = ["export", "--artifacts-dir", artifacts_dir, "--out", other / "mybundle"]
    assert refused(capsys, tmp_path, *export).startswith(
        f"error: {other / 'mybundle'} is inside {other}, a twotower folder whose manifest"
    )
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", bundle / "runs" / "run")
    assert f"is inside {bundle}, a twotower folder" in refused(capsys, tmp_path, *argv)
    assert snapshot(tmp_path) == before


def test_a_folder_holding_another_program_s_manifest_is_not_replaced(capsys, tmp_path, folders):
    """A ``manifest.json`` without twotower's ``kind`` (a web app's, say) is not format 1."""
    artifacts_dir, _ = folders
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / artifacts.MANIFEST).write_text('{"name": "My PWA", "start_url": "/"}')
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(webapp))
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith(f"error: {webapp} is a folder of an unknown kind")
    export = ["export", "--artifacts-dir", artifacts_dir, "--out", webapp]
    assert refused(capsys, tmp_path, *export).startswith(f"error: {webapp} is a folder of an")


@pytest.mark.parametrize("target", [".", "", "..", "sub/.."])
def test_the_current_folder_or_one_holding_it_is_never_a_target(
    capsys, tmp_path, folders, monkeypatch, target
):
    artifacts_dir, _ = folders
    here = tmp_path / "here"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here)
    line = refused(capsys, tmp_path, "export", "--artifacts-dir", artifacts_dir, "--out", target)
    assert line.endswith(
        "is the current folder or holds it; name a folder of its own (for example ./out)"
    )
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", target)
    assert refused(capsys, tmp_path, *argv).endswith("(for example ./out)")


def test_fit_refuses_to_write_over_its_own_data_file(capsys, tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,timestamp\n1,1,1\n")
    argv = ["fit", "--interactions", data, "--artifacts-dir", tmp_path, "--no-progress"]
    assert "which this command reads" in refused(capsys, tmp_path, *argv)


def test_fit_replaces_its_own_kind_and_removes_stale_staging(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    stale = [tmp_path / ".artifacts.staging-killed", tmp_path / ".artifacts.previous-123"]
    for folder in stale:
        folder.mkdir()
        (folder / artifacts.MODEL).write_bytes(b"half")
    keep = tmp_path / ".other.staging-x"  # another target's: not this run's business
    keep.mkdir()
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(artifacts_dir), "--seed", "1")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert artifacts.read_manifest(artifacts_dir)["config"]["seed"] == 1
    assert not any(folder.exists() for folder in stale)
    assert keep.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.staging-x", "artifacts", "bundle"]


def test_a_failed_fit_removes_the_parents_it_created(capsys, tmp_path):
    target = tmp_path / "a" / "b" / "artifacts"
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(target), "--min-rating", "9")
    code, _, err = run(capsys, *argv)
    assert "nothing left after filtering" in error_line(code, err)  # after the target was claimed
    assert list(tmp_path.iterdir()) == []


LONG = "a" * 300  # longer than a file name may be (255 bytes on common file systems)


@pytest.mark.parametrize(
    "argv",
    [
        ["recommend", "--artifacts-dir", LONG, "--user-id", "1"],
        ["evaluate", "--artifacts-dir", LONG],
        ["export", "--artifacts-dir", LONG],
        ["recommend", "--bundle", LONG, "--user-id", "1"],
    ],
)
def test_a_file_name_too_long_is_one_line_naming_it(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith("error: ") and "too long" in line


@pytest.mark.parametrize("command", ["fit", "export"])
def test_a_folder_that_cannot_be_made_leaves_none_of_its_parents(
    capsys, tmp_path, folders, command
):
    """The parents are made one by one; the one that fails must not leave the others."""
    artifacts_dir, _ = folders
    target = tmp_path / "new" / "deeper" / LONG / "out"
    if command == "fit":
        argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(target))
    else:
        argv = ["export", "--artifacts-dir", artifacts_dir, "--out", target]
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith(f"error: cannot create {tmp_path / 'new' / 'deeper'}")
    assert not (tmp_path / "new").exists()


def test_fit_writes_through_a_target_that_is_a_link(capsys, tmp_path, folders):
    """The folder the link names gets the new model; the link stays, nothing is left."""
    artifacts_dir, _ = folders
    link = tmp_path / "link"
    link.symlink_to(artifacts_dir.name)  # as `ln -s artifacts link`
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(link), "--seed", "1")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == artifacts_dir.name
    assert artifacts.read_manifest(artifacts_dir)["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "bundle", "link"]


def test_a_stale_link_beside_the_target_is_removed_not_followed(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for name in (".artifacts.previous-7", ".artifacts.staging-x"):
        (tmp_path / name).symlink_to(kept)
    artifacts.remove_stale(tmp_path / "artifacts")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]
    assert (kept / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name, other", [("run[1]", "run1"), ("run*", "runx"), ("run?", "runs")])
def test_a_target_named_like_a_pattern_removes_only_its_own_staging(tmp_path, name, other):
    own = [tmp_path / f".{name}.staging-a", tmp_path / f".{name}.previous-2"]
    others = [tmp_path / f".{other}.staging-b", tmp_path / f".{other}.previous-3"]
    for folder in own + others:
        folder.mkdir()
    artifacts.remove_stale(tmp_path / name)
    assert sorted(tmp_path.iterdir()) == sorted(others)


def test_a_staged_folder_gets_the_mode_mkdir_would_give(tmp_path):
    """The umask decides, as for any folder the user makes (mkdtemp's own mode is 0o700)."""
    previous = os.umask(0o027)
    try:
        with artifacts.staged_folder(tmp_path / "new") as staging:
            (staging / artifacts.CONFIG).write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750


# --- one run at a time -----------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from twotower import artifacts
with artifacts.exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_on_a_locked_target_stops_at_once(capsys, tmp_path, folders):
    """Another process writes the artifacts folder: this run stops before reading any data."""
    artifacts_dir, _ = folders
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(artifacts_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(artifacts_dir))
        before = snapshot(artifacts_dir)
        code, _, err = run(capsys, *argv)
        assert error_line(code, err) == (
            f"error: another twotower run is writing {artifacts_dir} "
            f"(lock {tmp_path / '.artifacts.lock'}); wait for it to finish"
        )
        assert snapshot(artifacts_dir) == before
    finally:
        holder.communicate("", timeout=60)
    code, _, err = run(capsys, *argv)  # the lock is released: this run wins
    assert code == 0, err
    assert not (tmp_path / ".artifacts.lock").exists()


# --- manifests are schema-checked ------------------------------------------------------


def edit(folder: Path, change) -> Path:
    path = folder / artifacts.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return path


def recommend(capsys, tmp_path, folder: Path, bundle: bool = False) -> str:
    where = ["--bundle", folder] if bundle else ["--artifacts-dir", folder]
    return refused(capsys, tmp_path, "recommend", *where, "--user-id", "1")


@pytest.mark.parametrize("field", ["files", "config", "data_sha256", "created", "kind"])
def test_a_missing_manifest_field_is_one_error_naming_the_file(capsys, tmp_path, folders, field):
    path = edit(folders[0], lambda manifest: manifest.pop(field))
    line = recommend(capsys, tmp_path, folders[0])
    assert line == f"error: {path}: field '{field}' is missing"


def test_a_malformed_manifest_field_is_one_error_naming_the_file(capsys, tmp_path, folders):
    path = edit(folders[1], lambda manifest: manifest.update(max_history_len="8"))
    line = recommend(capsys, tmp_path, folders[1], bundle=True)
    assert line == f"error: {path}: 'max_history_len' must be an integer, not '8'"


def test_a_manifest_without_checksums_is_refused(capsys, tmp_path, folders):
    path = edit(folders[0], lambda manifest: manifest.update(files={}))
    line = recommend(capsys, tmp_path, folders[0])
    assert line == f"error: {path} lists no checksum for {artifacts.MODEL}; the folder is refused"


def test_a_file_the_manifest_does_not_list_is_refused(capsys, tmp_path, folders):
    bundle = folders[1]
    edit(bundle, lambda manifest: manifest["files"].pop("hnsw_index.bin"))
    line = recommend(capsys, tmp_path, bundle, bundle=True)
    index = bundle / "hnsw_index.bin"
    assert line == f"error: bundle file {index} is not listed in manifest.json (no checksum)"


def test_a_manifest_naming_files_outside_its_folder_is_refused(capsys, tmp_path, folders):
    path = edit(folders[0], lambda manifest: manifest["files"].update({"../x": "0" * 64}))
    line = recommend(capsys, tmp_path, folders[0])
    assert line == f"error: {path}: '../x' is not a file name of this folder"


def test_a_folder_of_the_other_kind_is_named_as_such(capsys, tmp_path, folders):
    artifacts_dir, bundle = folders
    line = recommend(capsys, tmp_path, bundle)
    assert (
        line == f"error: {bundle} is a bundle, not an artifacts folder (its manifest.json says so)"
    )
    line = recommend(capsys, tmp_path, artifacts_dir, bundle=True)
    said = "(its manifest.json says so)"
    assert line == f"error: {artifacts_dir} is an artifacts folder, not a bundle {said}"


# --- evaluate scores the data of the fit, or nothing ---------------------------------------


def test_evaluate_refuses_data_other_than_the_fit_s(capsys, tmp_path, folders):
    artifacts_dir, _ = folders
    config = json.loads((artifacts_dir / artifacts.CONFIG).read_text())
    config["extra"]["synthetic_seed"] = 1  # the same dataset, other interactions
    path = artifacts_dir / artifacts.CONFIG
    path.write_text(json.dumps(config))
    edit(
        artifacts_dir,
        lambda manifest: manifest["files"].update({artifacts.CONFIG: artifacts.sha256_of(path)}),
    )
    line = refused(capsys, tmp_path, "evaluate", "--artifacts-dir", artifacts_dir)
    assert line.startswith("error: the data (dataset 'synthetic' in ")
    assert f"is not the data {artifacts_dir} was fitted on (fingerprint " in line


def write_ratings(path: Path) -> Path:
    """24 users, each with 6 of 23 items and no ratings column."""
    rows = [f"{u},{(u * 3 + s) % 23 + 1},{100 * u + s}" for u in range(1, 25) for s in range(6)]
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


def test_evaluate_finds_data_a_fit_was_given_by_a_relative_path(capsys, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    write_ratings(Path("ratings.csv"))
    argv = ["fit", "--interactions", "ratings.csv", "--artifacts-dir", "fitted", "--epochs", "1"]
    assert run(capsys, *argv, "--no-progress", "--json")[0] == 0
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "evaluate", "--artifacts-dir", "work/fitted", "--json")
    assert code == 0, err
    assert json.loads(out)["num_users"] == 24


def test_evaluate_can_be_pointed_at_moved_data(capsys, tmp_path):
    ratings = write_ratings(tmp_path / "ratings.csv")
    fitted = tmp_path / "fitted"
    argv = ["fit", "--interactions", ratings, "--artifacts-dir", fitted, "--epochs", "1"]
    assert run(capsys, *argv, "--no-progress", "--json")[0] == 0
    moved = Path(shutil.move(ratings, tmp_path / "moved.csv"))
    code, out, err = run(
        capsys, "evaluate", "--artifacts-dir", fitted, "--interactions", moved, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["num_users"] == 24
    moved.write_text(moved.read_text().replace("\n1,", "\n2,", 1))  # one interaction moves user
    line = refused(capsys, tmp_path, "evaluate", "--artifacts-dir", fitted, "--interactions", moved)
    assert line.startswith(f"error: the data ({moved}) is not the data {fitted} was fitted on")


def test_fit_refuses_a_target_that_holds_its_data_folder(capsys, tmp_path):
    """The swap would put the artifacts where the data folder (downloaded into during the
    run) was, and delete it."""
    (tmp_path / "run" / "data").mkdir(parents=True)
    argv = synthetic_fit(tmp_path / "run" / "data", "--artifacts-dir", tmp_path / "run")
    line = refused(capsys, tmp_path, *argv)
    assert line == (
        f"error: {tmp_path / 'run'} would replace {tmp_path / 'run' / 'data'}, the data folder "
        "of this run, with what it writes; choose a folder that does not hold it"
    )


def test_what_appears_in_the_target_during_a_run_is_not_swapped_away(capsys, tmp_path):
    """A dataset that writes into the target (a download there) finds it kept, the run refused."""
    target = tmp_path / "out"

    def downloads_into_the_target(config):
        (target / "ml").mkdir(parents=True)
        (target / "ml" / "u.data").write_text("the user's data")
        return load_synthetic(config)

    with registering("register_datasets", {"fills": downloads_into_the_target}, "fills"):
        argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", target)
        code, _, err = run(capsys, *argv[:2], "fills", *argv[3:])
    assert error_line(code, err) == (
        f"error: {target} exists and is not a twotower artifacts folder; choose another folder"
    )
    assert (target / "ml" / "u.data").read_text() == "the user's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("way", ["file", "loop"])
def test_a_target_beyond_a_file_or_a_loop_of_links_is_one_line(capsys, tmp_path, way):
    if way == "file":
        (tmp_path / "afile").write_text("mine")
        target, says = tmp_path / "afile" / "sub", f"cannot create {tmp_path / 'afile'} ("
    else:
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        target, says = tmp_path / "a" / "sub", f"cannot follow the links of {tmp_path / 'a'}"
    line = refused(capsys, tmp_path, *synthetic_fit(tmp_path / "d", "--artifacts-dir", target))
    assert line.startswith(f"error: {says}")
