"""The CLI's contract: config resolution, the original commands, JSON output."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import refused, run, synthetic_fit, tiny_config

from twotower import progress
from twotower.cli import build_parser, resolve_config
from twotower.config import TwoTowerConfig

DESIGN = Path(__file__).resolve().parents[1] / "configs" / "design.toml"


def resolved(*argv: str) -> TwoTowerConfig:
    return resolve_config(build_parser().parse_args(["fit", *argv]))


def test_toml_keys_are_flags_and_flags_win(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 7\nuser-encoder = "gru"\nlr = 0.01\n[extra]\nhnsw_seed = 4\n')
    config = resolved("--config", str(toml), "--epochs", "3", "--set", "hnsw_seed=8")
    assert (config.epochs, config.user_encoder, config.lr) == (3, "gru", 0.01)
    assert config.extra == {"hnsw_seed": 8}
    assert resolved().to_dict() == TwoTowerConfig().to_dict()  # no flags: the defaults


def test_the_original_readme_spellings_parse():
    config = resolved(
        "--data-dir", "./data", "--download-movielens", "--epochs", "5", "--device", "cpu",
        "--min-rating", "3.5", "--max-history-len", "20", "--embedding-dim", "32", "--k-eval", "5",
    )  # fmt: skip
    assert config.download and config.epochs == 5 and config.min_rating == 3.5
    assert (config.max_history_len, config.embedding_dim, config.k_eval) == (20, 32, 5)
    args = build_parser().parse_args(
        ["recommend", "--data-dir", "./data", "--user-id", "1", "--k", "10", "--exclude-seen"]
    )
    assert args.exclude_seen and args.k == 10 and args.user_id == "1"


def test_the_design_preset_is_the_first_design():
    config = resolved("--config", str(DESIGN))
    assert (config.pooling, config.causal, config.train_mode) == ("mean", False, "prefix")
    assert (config.loss, config.mask_accidental_hits) == ("inbatch-softmax", True)


def test_train_and_recommend_json_end_to_end(capsys, tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    data = ["--dataset", "synthetic", "--data-dir", config.data_dir, "--max-history-len", "8"]
    sizes = [f"--set={key}={value}" for key, value in config.extra.items()]
    code, out, err = run(capsys, "train", *data, *sizes, "--epochs", "1", "--json")
    assert code == 0, err
    fitted = json.loads(out)
    assert fitted["test"]["num_users"] == 60 and "popularity" in fitted
    assert len(fitted["sample"]["items"]) == 10
    code, out, err = run(
        capsys, "recommend", "--data-dir", config.data_dir, "--user-id", "1", "--k", "5", "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["user_id"] == "1" and [i["rank"] for i in answer["items"]] == [1, 2, 3, 4, 5]
    assert {"item_id", "title", "genres", "score"} <= set(answer["items"][0])
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True)


def commands(parser) -> dict[str, object]:
    """Every leaf command's parser, bench suites as ``bench <suite>``."""
    found = {}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            if sub._subparsers is None:
                found[name] = sub
            else:
                found.update({f"{name} {n}": s for n, s in commands(sub).items()})
    return found


def test_json_prints_json_on_every_command():
    """``--json`` takes no value anywhere (it prints); a file is an option named as one."""
    found = commands(build_parser())
    assert {"fit", "evaluate", "recommend", "export", "plugins", "bench serving"} <= set(found)
    for name, parser in found.items():
        flags = {flag: action for action in parser._actions for flag in action.option_strings}
        assert "--json" in flags and flags["--json"].nargs == 0, name
        if name.startswith("bench "):
            assert flags["--json-file"].metavar == "FILE", name


def option_help(command: str, capsys) -> dict[str, str]:
    """``twotower COMMAND --help`` as {first flag: its entry, on one line}."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    entries: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):  # an entry starts; deeper lines continue it
            entries[line.split()[0].rstrip(",")] = [line]
        elif line.startswith("   ") and entries:
            entries[list(entries)[-1]].append(line)
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def test_help_names_one_default_per_flag_and_the_fits_own_where_the_fit_decides(capsys):
    for command in ("fit", "evaluate", "recommend", "export", "serve"):
        for flag, text in option_help(command, capsys).items():
            assert text.count("(default:") <= 1, (command, flag, text)
    assert option_help("fit", capsys)["--mask-seen"].endswith("(default: True)")
    # commands over fitted artifacts take these from the fit unless a flag is given
    assert option_help("evaluate", capsys)["--mask-seen"].endswith("(default: the fit's own)")
    # evaluate finds the artifacts under ./data, and reads the data the fit read
    data_dir = option_help("evaluate", capsys)["--data-dir"]
    assert data_dir.endswith("(default: ./data for the artifacts, the fit's own data)")
    for command in ("recommend", "serve"):
        assert option_help(command, capsys)["--retriever"].endswith("(default: the fit's own)")


def test_a_fit_logged_to_a_file_prints_one_line_per_epoch(capsys, tmp_path):
    """stderr is no terminal here, as in a log file: no redrawn bars, a line per epoch."""
    if progress.console.is_terminal:  # FORCE_COLOR makes rich draw bars anywhere
        pytest.skip("rich takes stderr for a terminal here")
    argv = ["fit", "--dataset", "synthetic", "--data-dir", tmp_path, "--epochs", 3]
    argv += ["--max-history-len", 8, "--set", "synthetic_num_users=60"]
    code, _, err = run(capsys, *argv)
    assert code == 0
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all(
        re.fullmatch(r"epoch \S+  loss [\d.]+  [\d,]+ ex/s  valid recall@10 [\d.]+  [\d.]+ s", line)
        for line in epochs
    ), epochs
    assert "━" not in err  # no bar was drawn


def test_bench_refuses_result_files_it_cannot_write_before_it_runs(capsys, tmp_path):
    """Refused in one line before the suite runs: the JSON file given too is never written."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    file, under_file = tmp_path / "file", tmp_path / "file" / "r.md"
    file.write_text("mine")
    cases = {
        folder: f"error: {folder} is a folder; give the name of a file to write",
        under_file: f"error: cannot write {under_file}: {file} is a file, not a folder",
    }
    if Path("/proc/self").is_dir():  # Linux: a place no one may create files in, root included
        cases[Path("/proc/r.md")] = "error: cannot write /proc/r.md in /proc ("
    bench = ["bench", "scale", "--sizes", "1000", "--queries", "10", "--repeats", "1"]
    bench += ["--threads", "1", "--json-file", tmp_path / "ok.json"]
    for path, line in cases.items():
        assert refused(capsys, tmp_path, *bench, "--markdown-file", path).startswith(line)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigterm_stops_a_fit_as_ctrl_c_does(tmp_path):
    """`kill`, `timeout`, `docker stop`: exit 143, one line, nothing left beside the target."""
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = synthetic_fit(tmp_path / "data", "--artifacts-dir", str(runs / "new" / "artifacts"))
    argv = [a for a in argv if a not in ("--json", "--no-progress")]  # a line per epoch
    log = tmp_path / "stderr.txt"
    with open(log, "w") as sink:
        fit = subprocess.Popen(
            [sys.executable, "-m", "twotower", *argv, "--epochs", "1000", "--patience", "1000"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_until(lambda: "\nepoch " in log.read_text(), 120, "training")
        assert any(p.name.startswith(".artifacts.staging-") for p in (runs / "new").iterdir())
        fit.send_signal(signal.SIGTERM)
        assert fit.wait(timeout=60) == 143
    finally:
        fit.kill()
        fit.wait()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines[-1] == "terminated" and "Traceback" not in log.read_text()
    assert list(runs.iterdir()) == []  # no lock, no staging folder, no parent it created
