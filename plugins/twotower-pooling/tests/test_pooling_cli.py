"""The installed plugin through the command line: fit with a pooling encoder, then recommend."""

from __future__ import annotations

import json

from twotower.cli import main


def test_fit_and_recommend_with_transformer_attention(tmp_path, capsys):
    argv = [
        "fit", "--dataset", "synthetic", "--user-encoder", "transformer-attention",
        "--set", "synthetic_num_users=40", "--set", "synthetic_num_items=30",
        "--max-history-len", "6", "--embedding-dim", "16", "--num-layers", "1",
        "--epochs", "1", "--data-dir", str(tmp_path), "--no-progress", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["best_epoch"] == 1 and len(fitted["sample"]["items"]) == 10
    config = json.loads((tmp_path / "artifacts" / "config.json").read_text())
    assert config["user_encoder"] == "transformer-attention"

    argv = ["recommend", "--data-dir", str(tmp_path), "--user-id", "1", "--k", "5", "--json"]
    assert main(argv) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [item["rank"] for item in items] == [1, 2, 3, 4, 5]
