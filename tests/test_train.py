"""Training: determinism, both training modes, early stopping and the artifacts it writes."""

import json

import pytest
import torch
from helpers import TINY, error_line, run, synthetic_fit, tiny_config
from torch import nn

from twotower import TwoTowerError, fit, plugins, testing
from twotower.api import prepare
from twotower.hookspecs import hookimpl
from twotower.towers.mean import MeanEncoder
from twotower.train import prefix_batches, start_training, stop_if_diverged, train_epoch
from twotower.validation import validate


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


class PrefixOnly(nn.Module):
    """A user encoder with no ``encode_sequence``: prefix mode only."""

    def __init__(self, config, item_embedding, num_users):
        super().__init__()
        self.inner = MeanEncoder(config, item_embedding, num_users)

    def forward(self, user_ids, history, history_mask):
        return self.inner(user_ids, history, history_mask)


class SequenceSwitchedOff(MeanEncoder):
    """Declines the capability its parent offers, as the contract allows: by ``None``."""

    encode_sequence = None


def test_an_encoder_declining_encode_sequence_trains_in_prefix_mode(tmp_path):
    with testing.registered("user_encoders", SequenceSwitchedOff) as name:
        config = tiny_config(tmp_path, user_encoder=name, train_mode="auto")
        training = start_training(config, prepare(config))
    assert training.batches is prefix_batches


@pytest.mark.parametrize(
    ("encoder", "causal", "why"),
    [
        ("transformer", False, "its attention is not causal"),
        (PrefixOnly, True, "needs a causal encode_sequence"),
    ],
)
def test_sequence_mode_is_refused_before_any_data_is_read(tmp_path, encoder, causal, why):
    with testing.registered("user_encoders", encoder) as name:
        config = tiny_config(tmp_path, train_mode="sequence", causal=causal, user_encoder=name)
        with pytest.raises(TwoTowerError) as refused:
            validate(config)
    assert str(refused.value) == (
        f"user encoder {name!r} cannot train in sequence mode ({why}); use --train-mode prefix"
    )


def test_popularity_is_reported_beside_the_model(tmp_path):
    result = fit(tiny_config(tmp_path), progress=False)
    assert set(result.popularity) == {"valid", "test"}
    assert 0.0 < result.popularity["test"]["recall@50"] <= 1.0


def test_api_names_are_functions_even_after_every_module_is_imported():
    import twotower
    import twotower.evaluation  # a module named like the API function would shadow it
    import twotower.train

    assert callable(twotower.evaluate) and callable(twotower.fit) and callable(twotower.load)


# --- a diverged run is never scored -----------------------------------------------------


class NaNLoss:
    """A loss plugin whose every value is NaN, as a diverged objective's would be."""

    def __init__(self, config, item_counts):
        pass

    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return (user_vecs * item_vecs).sum() * float("nan")


class NaNLossPlugin:
    @hookimpl
    def register_losses(self, register):
        register("nan-loss", NaNLoss)


def test_a_nan_loss_stops_the_run_naming_the_epoch(tmp_path):
    plugins.add_plugin(NaNLossPlugin(), "nan-loss-plugin")
    try:
        config = tiny_config(tmp_path, loss="nan-loss", artifacts_dir=str(tmp_path / "out"))
        with pytest.raises(TwoTowerError, match=r"training diverged at epoch 1, step 1 \(loss nan"):
            fit(config, progress=False)
    finally:
        plugins.remove_plugin("nan-loss-plugin")
    assert not (tmp_path / "out").exists()


def test_a_learning_rate_that_diverges_is_an_error_not_a_perfect_score(tmp_path, capsys):
    argv = ["fit", "--dataset", "synthetic", "--data-dir", tmp_path / "data", "--lr", "1e6"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    code, out, err = run(capsys, *argv, "--epochs", "2", "--max-history-len", "8", "--json")
    assert error_line(code, err).startswith("error: training diverged at epoch 1")
    assert out == ""
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("loss", "norm"), [(float("nan"), 1.0), (1.0, float("inf"))])
def test_a_non_finite_loss_or_gradient_stops_training(loss, norm):
    with pytest.raises(TwoTowerError, match="training diverged at epoch 3, step 7"):
        stop_if_diverged(3, 7, loss, norm, 0.1)
    stop_if_diverged(3, 7, 1.0, 1.0, 0.1)  # finite: training goes on


def test_a_cosine_schedule_halves_the_rate_midway_and_ends_at_zero(tmp_path):
    config = validate(tiny_config(tmp_path, lr=0.01, epochs=2, lr_schedule="cosine"))
    split = prepare(config)
    training = start_training(config, split)
    generator = torch.Generator().manual_seed(0)
    rates = []
    for epoch in (1, 2):
        train_epoch(training, config, epoch, generator)
        rates.append(training.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.005, 0.0], abs=1e-12)
    constant = start_training(validate(tiny_config(tmp_path, lr=0.01)), split)
    assert constant.schedule is None


def test_an_unknown_schedule_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(TwoTowerError, match="lr_schedule"):
        validate(tiny_config(tmp_path, lr_schedule="linear"))


def test_the_protocol_ks_that_reach_the_whole_catalog_are_named(capsys, tmp_path):
    """40 items: @50 counts every target a hit (true, and said so); @10 and @20 do not."""
    code, out, err = run(capsys, *synthetic_fit(tmp_path / "data"))
    assert code == 0, err
    assert json.loads(out)["test"]["recall@50"] == 1.0
    assert (
        "the metrics @50 rank the whole catalog of 40 items: every target counts as a hit there"
        in " ".join(err.split())
    )
    assert "@20" not in err


class LearnedMargin(nn.Module):
    """In-batch softmax with a learned margin on the positive, pulled towards 1."""

    def __init__(self, config, item_counts):
        super().__init__()
        self.margin = nn.Parameter(torch.tensor(0.0))

    def forward(self, user_vecs, item_vecs, temperature, batch):
        scores = user_vecs @ item_vecs.T - self.margin * torch.eye(len(user_vecs))
        labels = torch.arange(len(user_vecs))
        pull = 0.5 * (self.margin - 1.0) ** 2
        return nn.functional.cross_entropy(scores / temperature, labels) + pull


def test_a_loss_with_its_own_parameters_trains_them(tmp_path):
    with testing.registered("losses", LearnedMargin) as name:
        training = start_training(tiny_config(tmp_path, loss=name), prepare(tiny_config(tmp_path)))
        margin = training.trained.loss_fn.margin
        train_epoch(training, tiny_config(tmp_path), 1, torch.Generator().manual_seed(0))
    assert margin.item() > 0.0  # AdamW moved it from 0 towards 1


class FailsInTraining(MeanEncoder):
    def encode_sequence(self, user_ids, history, history_mask):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x16 and 32x16)")


class FailsInEvaluation(MeanEncoder):
    encode_sequence = None  # prefix mode: forward is what trains

    def forward(self, user_ids, history, history_mask):
        if not self.training:
            raise IndexError("index 41 is out of bounds for dimension 0 with size 41")
        return super().forward(user_ids, history, history_mask)


class FailingLoss:
    def __init__(self, config, item_counts):
        pass

    def __call__(self, user_vecs, item_vecs, temperature, batch):
        raise KeyError("margin")


@pytest.mark.parametrize(
    ("kind", "component", "said"),
    [
        ("user_encoders", FailsInTraining, "user encoder {!r} failed in encode_sequence, in "
         "a training step (RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        ("user_encoders", FailsInEvaluation, "user encoder {!r} failed to encode users for "
         "evaluation (IndexError: index 41 is out of bounds"),
        ("losses", FailingLoss, "loss {!r} failed in a training step (KeyError: 'margin')"),
    ],
)  # fmt: skip
def test_a_plugin_failing_in_training_is_one_line_naming_it(
    capsys, tmp_path, kind, component, said
):
    setting = {"user_encoders": "--user-encoder", "losses": "--loss"}[kind]
    with testing.registered(kind, component) as name:
        argv = synthetic_fit(tmp_path / "data", setting, name, "--artifacts-dir", tmp_path / "out")
        code, _, err = run(capsys, *argv)
    assert error_line(code, err).startswith(f"error: {said.format(name)}")
    assert not (tmp_path / "out").exists()


class PeerGone(FailingLoss):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer")


def test_a_collective_failing_in_the_loss_is_left_to_the_distributed_session(tmp_path):
    """distributed.session words a lost peer ("another rank has most likely stopped"):
    the loss's own wrapping must not claim the failure as the loss's."""
    with testing.registered("losses", PeerGone) as name:
        config = tiny_config(tmp_path, loss=name)
        training = start_training(config, prepare(config))
        with pytest.raises(RuntimeError, match="Connection closed by peer"):
            train_epoch(training, config, 1, torch.Generator().manual_seed(0))
