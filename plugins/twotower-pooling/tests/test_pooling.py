"""The pooling encoders: twotower's user-encoder contract, plus what each pooling promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from twotower import plugins
from twotower.testing import check_user_encoder, tiny_config
from twotower.towers.model import TwoTowerModel
from twotower.train import resolve_train_mode

from twotower_pooling.encoders import TransformerAttention, TransformerCLS

ENCODERS = {"transformer-cls": TransformerCLS, "transformer-attention": TransformerAttention}


def test_the_installed_plugin_registers_both_encoders():
    for name, cls in ENCODERS.items():
        assert plugins.user_encoders().get(name) is cls
        assert plugins.user_encoders().plugin_of(name) == "pooling"
    (info,) = [info for info in plugins.plugin_table()[0] if info.name == "pooling"]
    assert info.version == "0.1.0" and info.error is None
    assert info.registered == {"user_encoders": list(ENCODERS)}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_keeps_the_user_encoder_contract(name):
    check_user_encoder(name)


def test_attention_without_normalisation_or_user_ids_keeps_the_contract():
    # the cold user's summary is all zeros here, and nothing rescales it afterwards
    check_user_encoder("transformer-attention", normalize=False, use_user_id=False)


def build(cls) -> nn.Module:
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, use_user_id=False)
    return cls(config, nn.Embedding(11, 16, padding_idx=0), num_users=3).eval()


@pytest.mark.parametrize("cls", list(ENCODERS.values()))
def test_encoders_train_in_prefix_mode(cls):
    config = tiny_config(train_mode="auto")
    model = TwoTowerModel(config, 3, 10, np.zeros((11, 0), dtype=np.float32), cls)
    assert resolve_train_mode(config, model) == "prefix"


@pytest.mark.parametrize("cls", list(ENCODERS.values()))
def test_every_item_sees_the_whole_history(cls):
    # bidirectional: changing the oldest item changes the summary, in any position
    encoder = build(cls)
    users = torch.tensor([0])
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 2, 3]])
    with torch.no_grad():
        first, second = encoder(users, a, a != 0), encoder(users, b, b != 0)
    assert not torch.allclose(first, second)


def test_attention_pooling_ignores_padded_positions():
    encoder = build(TransformerAttention)
    history = torch.tensor([[0, 0, 5, 6], [0, 0, 5, 6]])
    mask = history != 0
    history[1, :2] = torch.tensor([7, 8])  # items behind the mask must not count
    with torch.no_grad():
        vectors = encoder(torch.tensor([0, 0]), history, mask)
    torch.testing.assert_close(vectors[0], vectors[1])


def test_cold_users_get_the_same_finite_vector_from_both_encoders():
    for cls in ENCODERS.values():
        encoder = build(cls)
        history = torch.zeros(2, 4, dtype=torch.long)
        with torch.no_grad():
            vectors = encoder(torch.tensor([0, 0]), history, history != 0)
        assert torch.isfinite(vectors).all()
        torch.testing.assert_close(vectors[0], vectors[1])
