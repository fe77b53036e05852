"""A user encoder or loss plugin that cannot be built, or whose output breaks its contract, stops
training with one line naming it and what it returned, instead of failing deep inside torch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers import registering

from twotower import testing
from twotower.errors import TwoTowerError
from twotower.losses import InBatchSoftmax
from twotower.towers.mean import MeanEncoder
from twotower.towers.transformer import TransformerEncoder
from twotower.train import train


class Wider(MeanEncoder):
    def forward(self, user_ids, history, history_mask):
        vectors = super().forward(user_ids, history, history_mask)
        return torch.cat([vectors, vectors[:, :1]], dim=1)


class Doubles(MeanEncoder):
    def forward(self, user_ids, history, history_mask):
        return super().forward(user_ids, history, history_mask).double()


class Pair(MeanEncoder):
    def forward(self, user_ids, history, history_mask):
        return super().forward(user_ids, history, history_mask), None


class FlatSequence(TransformerEncoder):
    def encode_sequence(self, user_ids, history, history_mask):
        return super().encode_sequence(user_ids, history, history_mask)[:, -1]


class Unbuildable(MeanEncoder):
    def __init__(self, config, item_embedding, num_users):
        raise ValueError("needs a GPU")


class PerRow(InBatchSoftmax):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return (user_vecs * item_vecs).sum(dim=1)


class PlainFloat(InBatchSoftmax):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return super().__call__(user_vecs, item_vecs, temperature, batch).item()


class Unmakeable(InBatchSoftmax):
    def __init__(self, config, item_counts):
        raise KeyError("temperature")


class Detached(InBatchSoftmax):
    def __call__(self, user_vecs, item_vecs, temperature, batch):
        return super().__call__(user_vecs, item_vecs, temperature, batch).detach()


# name: (class, train mode, what the error says); in sequence mode ``forward`` first runs in
# validation, so its vectors are checked there too
ENCODERS = {
    "wider": (Wider, "prefix", "a torch.float32 tensor of shape [32, 17], not torch.float32"),
    "doubles": (Doubles, "prefix", "a torch.float64 tensor of shape [32, 16], not torch.float32"),
    "pair": (Pair, "sequence", "returned a tuple, not torch.float32 vectors of shape [40, 16]"),
    "flat-sequence": (FlatSequence, "sequence", "(encode_sequence) returned a torch.float32"),
    "unbuildable": (Unbuildable, "auto", "could not be built (ValueError: needs a GPU)"),
}
LOSSES = {
    "per-row": (PerRow, "returned a torch.float32 tensor of shape [32], not a float scalar"),
    "plain-float": (PlainFloat, "returned a float, not a tensor"),
    "detached": (Detached, "returned a value without gradients"),
    "unmakeable": (Unmakeable, "could not be made (KeyError: 'temperature')"),
}


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    encoders = {name: cls for name, (cls, _, _) in ENCODERS.items()}
    losses = {name: cls for name, (cls, _) in LOSSES.items()}
    with (
        registering("register_user_encoders", encoders, "broken-encoders"),
        registering("register_losses", losses, "broken-losses"),
    ):
        yield


def refusal(**changes) -> str:
    config = testing.tiny_config(epochs=1, **changes)
    with pytest.raises(TwoTowerError) as refused:
        train(config, testing.tiny_split())
    assert "\n" not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize("name", ENCODERS)
def test_an_encoder_returning_other_vectors_is_refused_by_name(registered, name):
    _, train_mode, says = ENCODERS[name]
    message = refusal(user_encoder=name, train_mode=train_mode)
    assert message.startswith(f"user encoder {name!r}") and says in message


@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_returning_no_trainable_scalar_is_refused_by_name(registered, name):
    message = refusal(loss=name, train_mode="prefix")
    assert message.startswith(f"loss {name!r} ") and LOSSES[name][1] in message
