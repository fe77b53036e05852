"""The benchmark harness on a tiny model: every row is there and accuracy matches evaluate."""

import json
import os
import stat

import pytest
from helpers import error_line, run, snapshot, tiny_config

from twotower import evaluate, fit, plugins
from twotower.bench import report, scale, serving, train
from twotower.errors import TwoTowerError
from twotower.export.bundle import offered_quantizations


@pytest.fixture(scope="module")
def serving_result(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    result = fit(tiny_config(tmp_path), progress=False)
    bench = serving.run(result.artifacts_dir, tmp_path / "exports", repeats=5, threads=1)
    return result, bench


def test_serving_table_has_every_runtime_and_retriever(serving_result):
    _, bench = serving_result
    quantized = [f"{f}-{q}" for f, schemes in offered_quantizations().items() for q in schemes]
    assert {"onnx-int8", "onnx-int8-static"} <= set(quantized)
    runtimes = ["torch", *plugins.formats().names(), *quantized]
    expected = {(r, x) for r in runtimes for x in plugins.retrievers().names()}
    assert {(row["runtime"], row["retriever"]) for row in bench["rows"]} == expected
    keys = {
        "user_p50_ms_b1", "user_p99_ms_b1", "user_p50_ms_b256", "retrieval_p50_ms",
        "retrieval_p99_ms", "qps", "recall@10", "mrr@10", "overlap@10",
    }  # fmt: skip
    for row in bench["rows"]:
        assert keys <= set(row)
        assert 0 < row["user_p50_ms_b1"] <= row["user_p99_ms_b1"]
        assert row["qps"] > 0
    assert {"machine", "versions", "threads", "headline"} <= set(bench)
    assert bench["threads"]["torch"] == 1


def test_pipeline_recall_matches_evaluate(serving_result):
    result, bench = serving_result
    metrics = evaluate(result.artifacts_dir)["model"]
    rows = {(row["runtime"], row["retriever"]): row for row in bench["rows"]}
    reference = rows["torch", "exact"]
    assert reference["recall@10"] == pytest.approx(metrics["recall@10"], abs=1e-9)
    assert reference["mrr@10"] == pytest.approx(metrics["mrr@10"], abs=1e-6)
    assert reference["overlap@10"] == 1.0
    for runtime in ("onnx", "torchscript", "torch-export"):  # fp32 runtimes agree exactly
        assert rows[runtime, "exact"]["recall@10"] == reference["recall@10"]


def test_serving_markdown_lists_every_row(serving_result):
    _, bench = serving_result
    text = report.markdown(bench, "serving")
    assert text.count("\n| ") == len(bench["rows"]) + 1  # header + rows
    assert "onnxruntime user tower p50 at batch 1" in text


def test_scale_suite_rows_and_plot(tmp_path):
    grid = {"m": (8,), "ef_construction": (50,), "ef": (10, 50)}
    result = scale.run(sizes=(1500,), queries=50, repeats=5, threads=1, grid=grid)
    methods = [(row["method"], row["params"].get("ef")) for row in result["rows"]]
    assert methods == [("exact", None), ("hnsw M=8 efC=50", 10), ("hnsw M=8 efC=50", 50)]
    exact, low, high = result["rows"]
    assert exact["recall@10"] == 1.0
    assert 0.5 < low["recall@10"] <= high["recall@10"] <= 1.0
    assert high["file_mib"] > 0 and high["build_s"] > 0
    path = scale.plot(result, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.write_json(result, tmp_path / "scale.json")
    assert json.loads((tmp_path / "scale.json").read_text())["dim"] == 64


def test_train_suite_summarises_seeds(tmp_path):
    contenders = train.grid(tiny_config(tmp_path, epochs=1), ["mean"], ["logq-softmax"])
    result = train.run(contenders, seeds=(0, 1))
    runs = result["runs"]["mean + logq-softmax"]
    assert [run["seed"] for run in runs] == [0, 1]
    (summary,) = result["summary"]
    values = [run["test"]["recall@10"] for run in runs]
    assert summary["test_recall@10_mean"] == pytest.approx(sum(values) / 2)
    assert summary["test_recall@10_std"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert summary["seeds"] == 2 and summary["seconds_mean"] > 0
    assert "| mean + logq-softmax | 2 |" in report.markdown(result, "train")


def test_accuracy_suite_positions_agree_with_the_fit(tmp_path):
    """Position -1 is the test target and -2 the validation target of the kept model."""
    base = tiny_config(tmp_path, epochs=2)
    contenders = [train.contender("default", base), train.contender("ema_decay=0+dropout=0", base)]
    assert contenders[1].config.ema_decay == 0 and contenders[1].config.dropout == 0
    partial: list[dict] = []
    result = train.run(contenders, seeds=(0,), on_run=partial.append)
    # after each fit, the result so far: the first holds the first contender only
    assert [list(p["contenders"]) for p in partial] == [["default"], list(result["contenders"])]
    assert partial[-1]["summary"] == result["summary"]
    for name in ("default", "ema_decay=0+dropout=0"):
        (run,) = result["runs"][name]
        positions = run["recall@10_by_position"]
        assert list(positions) == ["-5", "-4", "-3", "-2", "-1"]
        assert positions["-1"] == pytest.approx(run["test"]["recall@10"], abs=1e-12)
        assert positions["-2"] == pytest.approx(run["valid"]["recall@10"], abs=1e-12)
    text = report.markdown(result, "accuracy")
    assert "| ema_decay=0+dropout=0 | 1 |" in text and "-1 (test)" in text
    assert "Popularity under the same protocol" in text


def test_a_contender_names_settings_a_file_or_the_defaults(tmp_path):
    base = tiny_config(tmp_path)
    preset = tmp_path / "small.toml"
    preset.write_text('user_encoder = "gru"\nnum_layers = 1\n')
    named = train.contender(str(preset), base)
    assert named.name == "small" and named.config.user_encoder == "gru"
    assert named.config.num_layers == 1 and named.config.dataset == base.dataset
    assert train.contender("use_user_id=false+lr=0.01", base).config.lr == 0.01
    for bad in ("epochs", "no_such_setting=1", "dropout=2", "seed=3"):
        with pytest.raises(TwoTowerError):
            train.contender(bad, base)


def test_a_contender_file_is_read_as_fit_reads_a_config(tmp_path):
    base = tiny_config(tmp_path)  # --set synthetic_num_users=60, synthetic_num_items=40
    preset = tmp_path / "wide.toml"
    preset.write_text("embedding_dim = 32\n[extra]\nsynthetic_num_users = 50\n")
    config = train.contender(str(preset), base).config
    assert config.extra == {"synthetic_num_users": 50, "synthetic_num_items": 40}
    preset.write_text("bogus = 1\n")
    with pytest.raises(TwoTowerError, match=f"{preset}: unknown key"):
        train.contender(str(preset), base)
    same = [tmp_path / "a" / "x.toml", tmp_path / "b" / "x.toml"]
    for path in same:
        path.parent.mkdir()
        path.write_text("dropout = 0.3\n")
    with pytest.raises(TwoTowerError, match="two contenders are named 'x'"):
        train.distinct_names([train.contender(str(path), base) for path in same])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["accuracy", "--contenders", "default,default"], "default given twice"),
        (["accuracy", "--contenders", ","], "expected a comma-separated list"),
        (["accuracy", "--seeds", "0,0"], "each once"),
        (["scale-train", "--workloads", ","], "expected a comma-separated list"),
        (["scale-train", "--workload-seed", "-1"], "expected a seed"),
        (["train", "--encoders", "gru,gru"], "gru given twice"),
    ],
)
def test_suite_lists_are_refused_empty_or_with_repeats(capsys, argv, says):
    with pytest.raises(SystemExit):
        run(capsys, "bench", *argv)
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["scale", "--sizes", "10"], "--sizes 10: a catalog must hold more than the 10 items"),
        (["scale-train", "--epochs", "7"], "bench scale-train sets --epochs itself"),
        (["scale-train", "--dataset", "synthetic"], "sets --dataset itself"),
        (["train", "--user-encoder", "gru"], "bench train sets --user-encoder itself"),
        (["accuracy", "--seed", "3"], "bench accuracy sets --seed itself"),
        (["accuracy", "--artifacts-dir", "x"], "sets --artifacts-dir itself (every fit writes"),
        (["train", "--artifacts-dir", "x"], "sets --artifacts-dir itself (every fit writes"),
        (["scale-train", "--retriever", "exact"], "sets --retriever itself (its index stage"),
    ],
)
def test_a_setting_a_suite_decides_itself_is_refused(capsys, argv, says):
    code, _, err = run(capsys, "bench", *argv)
    assert says in error_line(code, err)


def test_a_result_file_gets_the_mode_open_would_give(tmp_path):
    """The umask decides for a new file (mkstemp's own mode is 0o600); a file keeps its own."""
    previous = os.umask(0o027)
    try:
        new = report.write_text(tmp_path / "new.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(new.stat().st_mode) == 0o640
    kept = tmp_path / "kept.md"
    kept.write_text("old")
    kept.chmod(0o604)
    report.write_text(kept, "new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and kept.read_text() == "new"


def test_a_result_file_that_cannot_be_written_is_one_error_naming_it(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    with pytest.raises(TwoTowerError) as caught:
        report.write_json({"rows": []}, folder)
    assert str(caught.value) == f"cannot write {folder} (Is a directory)"
    assert snapshot(tmp_path) == before  # no temporary file left either


def test_a_result_file_twotower_did_not_write_is_never_replaced(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes")
    link = tmp_path / "link.json"
    link.symlink_to(notes)
    base = ["bench", "scale", "--sizes", "50", "--queries", "5", "--repeats", "2"]
    for flags, says in (
        (["--json-file", notes], f"{notes} exists and is not a twotower result"),
        (["--json-file", link], f"{notes} exists and is not a twotower result"),
        (["--json-file", tmp_path / "a.out", "--markdown-file", tmp_path / "a.out"], "one file"),
    ):
        code, _, err = run(capsys, *base, *flags)
        assert says in error_line(code, err)
    assert notes.read_text() == "precious notes" and link.is_symlink()
    with pytest.raises(SystemExit):
        run(capsys, *base, "--plot", tmp_path / "plot.txt")
    assert "expected a file name ending in .png" in capsys.readouterr().err


def test_a_result_twotower_wrote_is_replaced_through_a_link(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    json_file, markdown, plot = results / "s.json", results / "s.md", results / "s.png"
    link = tmp_path / "latest.json"
    link.symlink_to(json_file)
    argv = ["bench", "scale", "--sizes", "50", "--queries", "5", "--repeats", "2"]
    argv += ["--markdown-file", markdown, "--plot", plot]
    for target in (json_file, link):  # the second run replaces all three
        code, _, err = run(capsys, *argv, "--json-file", target)
        assert code == 0, err
    assert link.is_symlink() and json.loads(json_file.read_text())["command"].startswith("twotower")
    assert all(report.written_by_twotower(path) for path in (json_file, markdown, plot))


def test_a_result_file_inside_a_twotower_folder_is_refused(capsys, fitted_artifacts):
    """One file its manifest does not list would make the folder unloadable."""
    base = ["bench", "scale", "--sizes", "50", "--queries", "5", "--repeats", "2"]
    before = snapshot(fitted_artifacts)
    code, _, err = run(capsys, *base, "--json-file", fitted_artifacts / "scale.json")
    folder = fitted_artifacts.resolve()
    assert error_line(code, err) == (
        f"error: {folder / 'scale.json'} is inside {folder}, "
        "a twotower folder whose manifest lists every file it holds (one more would make it "
        "unloadable); write the result elsewhere"
    )
    assert snapshot(fitted_artifacts) == before
