"""Training: determinism, both training modes, early stopping and the artifacts it writes."""

import json

import pytest
from helpers import tiny_config

from twotower import TwoTowerError, fit


def test_the_same_seed_gives_the_same_metrics(tmp_path):
    first = fit(tiny_config(tmp_path, artifacts_dir=str(tmp_path / "a")), progress=False)
    second = fit(tiny_config(tmp_path, artifacts_dir=str(tmp_path / "b")), progress=False)
    other = fit(tiny_config(tmp_path, artifacts_dir=str(tmp_path / "c"), seed=1), progress=False)
    assert first.test == second.test
    assert [e["loss"] for e in first.log] == [e["loss"] for e in second.log]
    assert [e["loss"] for e in first.log] != [e["loss"] for e in other.log]


@pytest.mark.parametrize("mode", ["prefix", "sequence"])
def test_both_training_modes_learn(tmp_path, mode):
    result = fit(tiny_config(tmp_path, train_mode=mode, epochs=3), progress=False)
    losses = [entry["loss"] for entry in result.log]
    assert losses[-1] < losses[0]
    assert result.test["num_items"] == 40


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    result = fit(tiny_config(tmp_path, epochs=8, patience=1, lr=0.05), progress=False)
    valid = [entry["valid"]["recall@10"] for entry in result.log]
    assert result.best_epoch == 1 + valid.index(max(valid))
    assert len(result.log) <= result.best_epoch + 1  # stopped one epoch after the best
    assert result.valid["recall@10"] == max(valid)


def test_fit_writes_the_protocol_files(tmp_path):
    result = fit(tiny_config(tmp_path), progress=False)
    folder = result.artifacts_dir
    test = json.loads((folder / "test_metrics.json").read_text())
    for key in ("recall@10", "mrr@10", "ndcg@10", "recall@20", "recall@50"):
        assert 0.0 <= test[key] <= 1.0
    assert test["num_users"] == 60 and test["mask_seen"] is True
    assert test["best_epoch"] == result.best_epoch
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == len(result.log)
    for line in lines:
        entry = json.loads(line)
        assert {"epoch", "loss", "valid", "seconds"} <= set(entry)
        assert "recall@10" in entry["valid"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["dataset"] == "synthetic"
    assert {"torch", "numpy", "python"} <= set(manifest["versions"])
    expected = {
        "model.pt", "config.json", "item_embeddings.npy", "hnsw_index.bin", "mappings.json",
        "items.json", "user_histories.json", "train_log.jsonl", "test_metrics.json",
    }  # fmt: skip
    assert expected <= set(manifest["files"])


def test_sequence_mode_needs_an_encoder_that_can(tmp_path):
    config = tiny_config(tmp_path, train_mode="sequence", causal=False)
    with pytest.raises(TwoTowerError, match="cannot train in sequence mode"):
        fit(config, progress=False)


def test_popularity_is_reported_beside_the_model(tmp_path):
    result = fit(tiny_config(tmp_path), progress=False)
    assert set(result.popularity) == {"valid", "test"}
    assert 0.0 < result.popularity["test"]["recall@50"] <= 1.0


def test_api_names_are_functions_even_after_every_module_is_imported():
    import twotower
    import twotower.evaluation  # a module named like the API function would shadow it
    import twotower.train

    assert callable(twotower.evaluate) and callable(twotower.fit) and callable(twotower.load)
