"""Every setting is validated before any data is read, each failure one line naming it.

The data file of these runs does not exist: a run that got past validation
would fail on it instead, so the message proves validation came first.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from helpers import TINY, error_line, refused, run, synthetic_fit

from twotower import TwoTowerConfig, fit, plugins
from twotower.cli import build_parser, main, resolve_config
from twotower.errors import TwoTowerError
from twotower.retrievers.hnsw import HnswRetriever
from twotower.validation import RULES, components, validate


def fails(capsys, tmp_path: Path, *argv: str) -> str:
    """Run ``fit`` on a missing file; return its one error line, checking nothing was written."""
    data = ["--interactions", str(tmp_path / "absent.csv"), "--data-dir", str(tmp_path / "d")]
    code, out, err = run(capsys, "fit", *data, "--no-progress", *argv)
    line = error_line(code, err)
    assert out == ""
    assert "absent.csv" not in line, "the data was read before the settings were checked"
    assert not (tmp_path / "d").exists()
    return line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "epochs must be an integer >= 1, not 0"),
        (["--embedding-dim", "-8"], "embedding_dim must be an integer in [1, 8192], not -8"),
        (
            ["--embedding-dim", "100000000"],
            "embedding_dim must be an integer in [1, 8192], not 100000000",
        ),
        (["--num-heads", "0"], "num_heads must be an integer in [1, 1024], not 0"),
        (["--batch-size", str(2**30)], "batch_size must be an integer in [1, 1048576], not"),
        (["--num-threads", "0"], "num_threads must be an integer in [1, 1024], not 0"),
        (["--num-threads", "100000"], "num_threads must be an integer in [1, 1024], not 100000"),
        (["--device", "meta"], "device 'meta' is not usable here"),
        (["--device", "hpu"], "device 'hpu' is not usable here"),
        (["--device", "privateuseone"], "device 'privateuseone' is not usable here"),
        (["--max-history-len", "0"], "max_history_len must be an integer in [1, 10000], not 0"),
        (
            ["--max-history-len", "100000000000"],
            "max_history_len must be an integer in [1, 10000], not 100000000000",
        ),
        (["--lr", "-0.1"], "lr must be a number > 0, not -0.1"),
        (["--dropout", "1"], "dropout must be a number in [0, 1), not 1.0"),
        (["--temperature", "0"], "temperature must be a number > 0, not 0.0"),
        (["--train-mode", "windows"], "train_mode must be one of auto, prefix, sequence"),
        (["--pooling", "max"], "pooling must be one of mean, last, not 'max'"),
        (["--embedding-dim", "31"], "num_heads (2) must divide embedding_dim (31)"),
        (["--min-temperature", "2"], "min_temperature (2) must not exceed max_temperature (1)"),
        (["--temperature", "2"], "temperature must be in [min_temperature, max_temperature]"),
        (["--hnsw-m", "0"], "hnsw_m must be an integer in [2, 1024], not 0"),
        (["--hnsw-m", "1"], "hnsw_m must be an integer in [2, 1024], not 1"),
        (["--set", "hnsw_seed=x"], "hnsw_seed must be an integer, not 'x'"),
        (["--set", "hnsw_size=3"], "unknown option(s) hnsw_size of retriever 'hnsw'; known: "),
        (["--set", "epochs=3"], "--set epochs: epochs is a run setting of its own; use --epochs"),
        (["--set", "extra=1"], "extra is a run setting of its own; it is the table of plugin"),
        (["--set", "hnsw_m=3"], "--set hnsw_m: hnsw_m is a run setting of its own"),
        (["--set", "nprobe=3"], "unknown plugin option 'nprobe': a plugin option starts with"),
        (["--dataset", "synthetic"], "interactions is read by dataset 'files' only, but the"),
    ],
)
def test_a_bad_setting_fails_first_in_one_line(capsys, tmp_path, argv, message):
    assert message in fails(capsys, tmp_path, *argv)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('normalize = "false"', "normalize must be true or false, not 'false'"),
        ('epochs = "5"', "epochs must be an integer, not '5'"),
        ("epochs = 2.5", "epochs must be an integer, not 2.5"),
        ("dropout = true", "dropout must be a number, not True"),
        ("lr = nan", "lr must be a finite number, not nan"),
        ("patience = 0", "patience must be an integer >= 1, not 0"),
        ("extra = 3", "extra must be a table, not 3"),
        ("learning_rate = 0.1", "unknown key(s) learning_rate"),
    ],
)
def test_a_bad_toml_value_names_the_file_and_the_setting(capsys, tmp_path, toml, message):
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    assert fails(capsys, tmp_path, "--config", str(path)) == f"error: {path}: {message}"


def test_a_bad_flag_is_named_alone_with_or_without_a_toml(capsys, tmp_path):
    """The flag's value is at fault, not a file (there was a stray "flags: " prefix)."""
    expected = "error: min_rating must be a finite number, not nan"
    assert fails(capsys, tmp_path, "--min-rating", "nan") == expected
    path = tmp_path / "run.toml"
    path.write_text("epochs = 3\n")
    assert fails(capsys, tmp_path, "--config", str(path), "--min-rating", "nan") == expected


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("temperature = 5.0", "temperature must be in [min_temperature, max_temperature]"),
        ("[extra]\nhnsw_seed = -1", "hnsw_seed must be an integer >= 0, not -1"),
    ],
)
def test_settings_that_combine_badly_name_the_toml_they_may_come_from(
    capsys, tmp_path, toml, message
):
    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    line = fails(capsys, tmp_path, "--config", str(path))
    assert line.startswith(f"error: {message}")
    assert line.endswith(f"(settings from {path} and the flags)")


def test_an_encoder_without_heads_takes_any_width(tmp_path):
    config = TwoTowerConfig(user_encoder="gru", embedding_dim=30)
    assert validate(config).embedding_dim == 30


def test_validation_returns_typed_values():
    config = validate(TwoTowerConfig(lr=1, dropout=0))
    assert isinstance(config.lr, float) and isinstance(config.dropout, float)


def test_the_python_api_validates_too(tmp_path):
    config = TwoTowerConfig(dataset="synthetic", epochs=0, data_dir=str(tmp_path))
    with pytest.raises(TwoTowerError, match="epochs must be an integer >= 1, not 0"):
        fit(config, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_hnsw_options_are_checked_before_hnswlib_sees_them():
    """hnswlib kills the process on M=0 (segfault), so this must raise in Python."""
    with pytest.raises(TwoTowerError, match="hnsw_m must be an integer in"):
        HnswRetriever.build([[1.0, 0.0], [0.0, 1.0]], m=0)


def test_every_numeric_setting_has_allowed_values():
    """A new numeric field needs an entry in twotower/validation.py RULES (or an owner's schema)."""
    hints = typing.get_type_hints(TwoTowerConfig)
    unbounded = {"min_rating"}  # any threshold is meaningful, even one nothing passes
    owned = [  # the settings a component's option schema checks, such as hnsw_m
        plugins.option_prefix(name)
        for _, name, c in components()
        if getattr(c, "option_schema", None)
    ]
    for field in dataclasses.fields(TwoTowerConfig):
        numeric = {int, float} & set(typing.get_args(hints[field.name]) or [hints[field.name]])
        if not numeric or field.name in unbounded:
            continue
        by_schema = any(field.name.startswith(prefix) for prefix in owned)
        assert field.name in RULES or by_schema, f"{field.name} has no allowed values"


# --- flags select and contradict -------------------------------------------------------


def resolved(*argv: str) -> TwoTowerConfig:
    return resolve_config(build_parser().parse_args(list(argv)))


def test_interactions_alone_select_the_files_dataset(tmp_path):
    assert resolved("fit", "--interactions", "x.csv").dataset == "files"
    assert resolved("fit", "--items", "m.csv", "--interactions", "x.csv").dataset == "files"
    assert resolved("fit").dataset == TwoTowerConfig.dataset
    toml = tmp_path / "run.toml"
    toml.write_text('interactions = "x.csv"\n')
    assert resolved("fit", "--config", str(toml)).dataset == "files"


def test_interactions_contradict_a_dataset_named_in_the_toml(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "movielens-100k"\n')
    with pytest.raises(TwoTowerError, match="interactions is read by dataset 'files'"):
        resolved("fit", "--config", str(toml), "--interactions", "x.csv")


@pytest.mark.parametrize("command", ["evaluate", "recommend", "export", "bench serving"])
def test_every_command_with_settings_reads_its_config(capsys, tmp_path, command):
    missing = tmp_path / "absent.toml"
    extra = ["--user-id", "1"] if command == "recommend" else []
    code, _, err = run(capsys, *command.split(), "--config", missing, *extra)
    assert error_line(code, err) == f"error: config file not found: {missing}"
    toml = tmp_path / "run.toml"
    toml.write_text(f'artifacts_dir = "{tmp_path / "fitted"}"\n')
    code, _, err = run(capsys, *command.split(), "--config", toml, *extra)
    assert error_line(code, err).startswith(f"error: no artifacts folder at {tmp_path / 'fitted'}")


def test_a_config_that_is_not_a_readable_file_is_one_line(capsys, tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    assert fails(capsys, tmp_path, "--config", str(tmp_path)).endswith("(Is a directory)")
    assert f"error: {binary}: not valid TOML" in fails(capsys, tmp_path, "--config", str(binary))


def test_a_k_eval_that_reaches_the_whole_catalog_is_refused(capsys, tmp_path):
    argv = synthetic_fit(tmp_path / "data", "--k-eval", str(TINY["synthetic_num_items"]))
    line = refused(capsys, tmp_path, *argv)
    assert line.startswith("error: k_eval (40) must be below the number of items (40)")


def write_seen_heavy(path) -> None:
    """Three users over 6 items: a and b have seen 5 items before their test item, c 3."""
    rows = ["user,item,rating,timestamp"]
    for user, items in (("a", "123456"), ("b", "654321"), ("c", "1234")):
        rows += [f"{user},{item},5,{time}" for time, item in enumerate(items)]
    path.write_text("\n".join(rows) + "\n")


def test_a_k_eval_that_reaches_every_unseen_item_is_refused(capsys, tmp_path):
    """With seen items masked, user c's test query ranks 6 - 3 = 3 items, a's and b's 1:
    at K = 3 every target is a hit although K is below the catalog of 6."""
    write_seen_heavy(tmp_path / "seen.csv")
    argv = ["fit", "--interactions", tmp_path / "seen.csv", "--artifacts-dir", tmp_path / "a"]
    line = refused(capsys, tmp_path, *argv, "--k-eval", "3")
    assert line == (
        "error: k_eval (3) must be below 3, the most items a test query ranks (the 6 items "
        "less the user's earlier ones), or every target counts as a hit"
    )
    code, _, err = run(capsys, *argv, "--k-eval", "2", "--epochs", "1", "--json")
    assert code == 0, err
    assert "the metrics @2 (2) rank every item some of the 3 users have not seen" in " ".join(
        err.split()
    )


@pytest.mark.parametrize("flag", ["--repeats", "--threads", "--queries", "--sizes"])
def test_bench_counts_must_be_positive(capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "scale", flag, "0"])
    assert exit_info.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_the_api_refuses_what_is_not_a_config_or_a_bool_in_one_line(tmp_path):
    for config, says in (
        ({"dataset": "synthetic"}, "expected a TwoTowerConfig, not dict"),
        (None, "expected a TwoTowerConfig, not NoneType"),
        (TwoTowerConfig(extra={1: 2}), "plugin option names are strings, not 1"),
    ):
        with pytest.raises(TwoTowerError, match=says):
            fit(config, progress=False)
    config = TwoTowerConfig(dataset="synthetic", artifacts_dir=str(tmp_path / "a"))
    with pytest.raises(TwoTowerError, match="progress must be True or False, not 'no'"):
        fit(config, progress="no")
    assert not (tmp_path / "a").exists()


def test_numpy_scalars_count_as_the_numbers_they_hold():
    import numpy as np

    config = validate(
        TwoTowerConfig(embedding_dim=np.int64(32), lr=np.float32(0.5), normalize=np.bool_(True))
    )
    assert (config.embedding_dim, config.lr, config.normalize) == (32, 0.5, True)
    assert type(config.embedding_dim) is int and type(config.lr) is float
