"""``twotower.testing``: every built-in passes its contract check, and each check
catches the breakage it promises to catch (on small broken components)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Spare, registering
from torch import nn

from twotower import plugins, testing
from twotower.export.torchscript import TorchScriptFormat
from twotower.losses import InBatchSoftmax
from twotower.retrievers.exact import FILE, ExactRetriever
from twotower.towers.mean import MeanEncoder
from twotower.towers.runtime import TorchTowers


@pytest.mark.parametrize("name", plugins.user_encoders().names())
def test_built_in_user_encoder_keeps_the_contract(name):
    testing.check_user_encoder(name)


@pytest.mark.parametrize("name", plugins.losses().names())
def test_built_in_loss_keeps_the_contract(name):
    testing.check_loss(name)


@pytest.mark.parametrize("name", plugins.retrievers().names())
def test_built_in_retriever_keeps_the_contract(name):
    testing.check_retriever(name)


@pytest.mark.parametrize("name", plugins.formats().names())
def test_built_in_format_keeps_the_contract(name):
    testing.check_format(name)


# --- the checks fail on broken components --------------------------------------------


class ColdUserNaN(MeanEncoder):
    """Divides by the history length without a floor: a cold user gets NaN."""

    def forward(self, user_ids, history, history_mask):
        x = self.item_embedding(history).masked_fill(~history_mask.unsqueeze(-1), 0.0)
        summary = x.sum(dim=1) / history_mask.sum(dim=1, keepdim=True)  # 0 / 0 when cold
        return self.head(summary, user_ids)


def test_check_user_encoder_catches_a_non_finite_cold_user():
    with pytest.raises(AssertionError, match="cold user gets a non-finite vector"):
        testing.check_user_encoder(ColdUserNaN)
    assert "checked-ColdUserNaN" not in plugins.user_encoders()  # registered for the check only


class Float64Vectors(MeanEncoder):
    def forward(self, user_ids, history, history_mask):
        return super().forward(user_ids, history, history_mask).double()


class NotScriptable(MeanEncoder):
    """Exports to ONNX, but TorchScript cannot compile a lambda attribute it calls."""

    def __init__(self, config, item_embedding, num_users):
        super().__init__(config, item_embedding, num_users)
        self.post = lambda x: x

    def forward(self, user_ids, history, history_mask):
        return self.post(super().forward(user_ids, history, history_mask))


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (Float64Vectors, "user encoder .*Float64Vectors' returned a torch.float64 tensor"),
        (NotScriptable, "NotScriptable' exported to torchscript: RuntimeError"),
    ],
)
def test_check_user_encoder_speaks_in_assertions_naming_the_rule(encoder, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_user_encoder(encoder)


class Peeking(MeanEncoder):
    """Claims sequence mode but gives every position the whole history's vector."""

    def encode_sequence(self, user_ids, history, history_mask):
        whole = self.forward(user_ids, history, history_mask)  # [B, d]
        return whole.unsqueeze(1).expand(-1, history.shape[1], -1)


class CannotExport(TorchScriptFormat):
    def export(self, model, out_dir):
        raise RuntimeError("this format is broken")


def test_check_user_encoder_exports_in_the_built_in_formats_only():
    """A broken third-party format is its author's to fix (check_format), not every
    encoder author's: the encoder check exports in the formats twotower ships."""
    with registering("register_formats", {"cannot-export": CannotExport}, "broken-format"):
        testing.check_user_encoder("mean")


def test_check_user_encoder_catches_a_sequence_mode_that_sees_the_future():
    with pytest.raises(AssertionError, match=r"encode_sequence at position \d+ vs forward"):
        testing.check_user_encoder(Peeking)


def test_check_user_encoder_catches_a_parameter_that_never_learns():
    with pytest.raises(AssertionError, match=r"no gradient reaches \['model\.user_tower\.spare'\]"):
        testing.check_user_encoder(Spare)


class Ascending(InBatchSoftmax):
    """Rewards the wrong item: the negated in-batch softmax."""

    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return -super().__call__(user_vecs, item_vecs, temperature, batch)


class Detached(InBatchSoftmax):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return super().__call__(user_vecs.detach(), item_vecs, temperature, batch)


def test_check_loss_catches_a_loss_that_prefers_shuffled_pairs():
    with pytest.raises(AssertionError, match="not lower than"):
        testing.check_loss(Ascending)


def test_check_loss_catches_a_loss_without_user_gradients():
    with pytest.raises(AssertionError, match="gradient reaches the user vectors"):
        testing.check_loss(Detached)


class NoGradient(InBatchSoftmax):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        with torch.no_grad():
            return super().__call__(user_vecs, item_vecs, temperature, batch)


def test_check_loss_names_a_loss_without_any_gradient_as_training_would():
    with pytest.raises(AssertionError, match="'NoGradient' returned a value without gradients"):
        testing.check_loss(NoGradient)


class UnusedScale(nn.Module):
    """In-batch softmax owning a parameter that its value never uses."""

    def __init__(self, config, item_counts):
        super().__init__()
        self.softmax = InBatchSoftmax(config, item_counts)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, user_vecs, item_vecs, temperature, batch):
        return self.softmax(user_vecs, item_vecs, temperature, batch)


class LearnedScale(UnusedScale):
    def forward(self, user_vecs, item_vecs, temperature, batch):
        return self.softmax(user_vecs * self.scale, item_vecs, temperature, batch)


def test_check_loss_passes_a_loss_that_trains_its_own_parameter():
    testing.check_loss(LearnedScale)


def test_check_loss_takes_a_factory_of_any_name():
    testing.check_loss(lambda config, item_counts: InBatchSoftmax(config, item_counts))


def test_check_loss_catches_a_loss_parameter_that_never_learns():
    with pytest.raises(AssertionError, match=r"no gradient reaches \['loss_fn\.scale'\]"):
        testing.check_loss(UnusedScale)


class IgnoresExclusion(ExactRetriever):
    def search(self, queries, k, exclude=None):
        return super().search(queries, k)


class WorstFirst(ExactRetriever):
    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        return ids[:, ::-1].copy(), scores[:, ::-1].copy()


class NoFiles(ExactRetriever):
    """Loads an empty index from a folder without its file, instead of raising."""

    @classmethod
    def load(cls, directory):
        path = Path(directory) / FILE
        return cls(np.load(path) if path.is_file() else np.zeros((0, 16), dtype=np.float32))


class Clipping(ExactRetriever):
    """Answers at most one row per item instead of filling ``k`` past the catalog."""

    def search(self, queries, k, exclude=None):
        return super().search(queries, min(k, len(self.vectors)), exclude)


class ZeroFilled(ExactRetriever):
    """Fills the rows past the last item with score 0 instead of -inf."""

    def search(self, queries, k, exclude=None):
        ids, scores = super().search(queries, k, exclude)
        return ids, np.where(ids == -1, np.float32(0), scores)


class OverwritesConfig(ExactRetriever):
    def save(self, directory):
        (Path(directory) / "config.json").write_text('{"mine": true}')
        return [*super().save(directory), Path(directory) / "config.json"]


class OverwritesTheModel(ExactRetriever):
    def save(self, directory):
        (Path(directory) / "model.pt").write_bytes(b"mine")
        return [*super().save(directory), Path(directory) / "model.pt"]


class AnswersNothing(ExactRetriever):
    def search(self, queries, k, exclude=None):
        return None


class AnswersIdsOnly(ExactRetriever):
    def search(self, queries, k, exclude=None):
        return super().search(queries, k, exclude)[0]


class BuildsNothing(ExactRetriever):
    @classmethod
    def build(cls, item_vectors, **params):
        return None


class LoadsBadly(ExactRetriever):
    @classmethod
    def load(cls, directory):
        if not (Path(directory) / FILE).exists():
            raise ValueError("no index here")
        return super().load(directory)


@pytest.mark.parametrize(
    ("retriever", "message"),
    [
        (OverwritesTheModel, "wrote over model.pt"),
        (AnswersNothing, r"search\(\) must return \(ids, scores\), got NoneType"),
        (AnswersIdsOnly, r"search\(\) must return \(ids, scores\), got ndarray"),
        (BuildsNothing, "what build\\(\\) returns"),
        (LoadsBadly, "must raise FileNotFoundError, not ValueError: no index here"),
        (IgnoresExclusion, "excluded items"),
        (WorstFirst, "not best first"),
        (NoFiles, "must raise"),
        (Clipping, r"past the catalog of 500, gave shape \(2, 500\)"),
        (ZeroFilled, "an id -1 scores -inf, and only an id -1"),
        (OverwritesConfig, "wrote over config.json"),
    ],
)
def test_check_retriever_catches_broken_search(retriever, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_retriever(retriever)


class Drifting(TorchScriptFormat):
    """Loads towers whose user vectors are off by 1e-3."""

    def load(self, bundle_dir, threads=1):
        towers = super().load(bundle_dir, threads)
        return Shifted(towers.user, towers.item, threads)


class Shifted(TorchTowers):
    def encode_users(self, user_ids, history, history_mask):
        return super().encode_users(user_ids, history, history_mask) + np.float32(1e-3)


def test_check_format_catches_drifting_towers():
    with pytest.raises(AssertionError, match=r"user tower.*max abs diff"):
        testing.check_format(Drifting)


class WithoutSave:
    """Searches, but cannot save its index."""

    build, load, search = ExactRetriever.build, ExactRetriever.load, ExactRetriever.search


def test_check_retriever_names_what_the_contract_lacks():
    with pytest.raises(AssertionError, match=r"lacks save of contracts\.Retriever"):
        testing.check_retriever(WithoutSave)


class PromisesInt4(TorchScriptFormat):
    quantizations = ("int4",)  # a capability without its quantize()


class Ungraphed(TorchScriptFormat):
    """Loads towers that cannot describe their graphs."""

    def load(self, bundle_dir, threads=1):
        towers = super().load(bundle_dir, threads)
        return types.SimpleNamespace(
            encode_users=towers.encode_users, encode_items=towers.encode_items
        )


def test_check_format_holds_formats_to_their_contract_and_capabilities():
    with pytest.raises(
        AssertionError, match=r"offers quantizations \['int4'\] but has no quantize"
    ):
        testing.check_format(PromisesInt4)
    with pytest.raises(
        AssertionError, match=r"what load\(\) returns: lacks graphs of contracts\.Towers"
    ):
        testing.check_format(Ungraphed)


def test_tiny_fixture_is_small():
    split = testing.tiny_split()
    assert split.num_users <= 40 and split.num_items <= 30
    assert testing.tiny_config().max_history_len <= 8
