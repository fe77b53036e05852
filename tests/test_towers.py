"""The towers: shapes, normalisation, cold users, and the runtime that wraps torch modules
(sequence == prefix encoding is ``twotower.testing.check_user_encoder``'s)."""

import numpy as np
import pytest
import torch

from twotower import plugins
from twotower.config import TwoTowerConfig
from twotower.data.padding import pad_left
from twotower.export.towers import towers
from twotower.towers.dropout import Dropout
from twotower.towers.model import TwoTowerModel
from twotower.towers.runtime import ModelTowers, TorchTowers

ENCODERS = plugins.user_encoders().names()
HISTORIES = [np.array([3, 4, 5, 6, 7]), np.array([9]), np.arange(1, 13)]  # 12 > max_len 8


def make_model(encoder: str, **changes) -> TwoTowerModel:
    torch.manual_seed(0)
    config = TwoTowerConfig(
        user_encoder=encoder, max_history_len=8, embedding_dim=16, num_heads=2, **changes
    )
    genres = np.zeros((21, 3), dtype=np.float32)
    genres[1:, 0] = 1.0
    genres[::2, 1] = 1.0
    cls = plugins.user_encoders().get(encoder)
    return TwoTowerModel(config, num_users=4, num_items=20, item_genres=genres, encoder_class=cls)


def encode(model, users, histories):
    ids, mask = pad_left(histories, model.max_history_len)
    with torch.no_grad():
        return model.encode_users(torch.tensor(users), torch.as_tensor(ids), torch.as_tensor(mask))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_user_vectors_are_normalised_and_cold_users_finite(encoder):
    model = make_model(encoder, normalize=True).eval()
    vectors = encode(model, [1, 2, 3, 0], [*HISTORIES, np.zeros(0, dtype=np.int64)])
    assert vectors.shape == (4, 16)
    assert torch.isfinite(vectors).all()
    assert torch.allclose(vectors[:3].norm(dim=1), torch.ones(3), atol=1e-5)
    # a cold user is unit length too, or zero where the encoder knows nothing of them
    # (the mean of no items, with no user-ID row and no MLP to add a bias)
    assert vectors[3].norm().item() == pytest.approx(1.0, abs=1e-5) or not vectors[3].any()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_longer_history_keeps_its_most_recent_items(encoder):
    """Every encoder reads the last max_history_len items, however wide its input."""
    model = make_model(encoder).eval()
    long, recent = np.arange(1, 13), np.arange(5, 13)
    ids, mask = pad_left([long], 12)  # wider than max_history_len 8
    with torch.no_grad():
        got = model.encode_users(torch.tensor([1]), torch.as_tensor(ids), torch.as_tensor(mask))
    assert torch.allclose(got, encode(model, [1], [recent]), atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_width_does_not_change_a_user_vector(encoder):
    model = make_model(encoder).eval()
    alone = encode(model, [1], [HISTORIES[1]])  # padded to width 1
    batched = encode(model, [1, 2], [HISTORIES[1], HISTORIES[2]])  # padded to width 8
    assert torch.allclose(alone[0], batched[0], atol=1e-6)


def test_unnormalised_towers_keep_their_norms():
    model = make_model("transformer", normalize=False).eval()
    items = model.catalog_vectors()
    assert items.shape == (20, 16)
    assert not torch.allclose(items.norm(dim=1), torch.ones(20))


def test_an_item_is_its_id_embedding_plus_its_genres_in_both_towers():
    model = make_model("mean", normalize=False, use_user_id=False, dropout=0.0).eval()
    embedding = model.item_tower.item_embedding
    ids, genres = embedding.ids.weight, embedding.genres.weight
    with torch.no_grad():
        # item 2 has genres 0 and 1 (see make_model); padding maps to zeros
        assert torch.allclose(
            model.encode_items(torch.tensor([2]))[0], ids[2] + genres[0] + genres[1]
        )
        assert not embedding(torch.tensor([0])).any()
        # the user tower reads histories through the same embedding: its mean, here
        history = [np.array([2, 3])]
        expected = (ids[2] + genres[0] + genres[1] + ids[3] + genres[0]) / 2
        assert torch.allclose(encode(model, [1], history)[0], expected, atol=1e-6)
        embedding.item_genres[2, 2] = 1.0  # give item 2 another genre: both towers see it
        assert torch.allclose(encode(model, [1], history)[0], expected + genres[2] / 2, atol=1e-6)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_exported_towers_read_items_from_one_frozen_table_and_leave_the_model_alone(encoder):
    model = make_model(encoder).eval()
    trained = model.item_tower.item_embedding
    user_tower, item_tower = towers(model)
    table = item_tower.tower.item_embedding
    # one lookup table, shared by both graphs as the model shares its embedding
    assert isinstance(table, torch.nn.Embedding) and not table.weight.requires_grad
    assert user_tower.encoder.item_embedding is table
    assert model.item_tower.item_embedding is trained and model.user_tower.item_embedding is trained
    assert trained.ids.weight.requires_grad  # the model still trains
    ids, mask = pad_left(HISTORIES, model.max_history_len)
    users, items = [1, 2, 0], torch.arange(21)
    with torch.no_grad():
        torch.testing.assert_close(table.weight, trained(items), atol=0.0, rtol=0.0)
        torch.testing.assert_close(item_tower(items), model.encode_items(items))
        torch.testing.assert_close(
            user_tower(torch.tensor(users), torch.as_tensor(ids), torch.as_tensor(mask)),
            encode(model, users, HISTORIES),
        )


def test_temperature_is_clamped():
    model = make_model("mean", min_temperature=0.05, max_temperature=0.5)
    with torch.no_grad():
        model.log_temperature.fill_(-10.0)
    assert model.temperature.item() == pytest.approx(0.05)
    with torch.no_grad():
        model.log_temperature.fill_(10.0)
    assert model.temperature.item() == pytest.approx(0.5)


class ThreadCount(torch.nn.Module):
    """Answers with the number of threads torch computes on during the call."""

    def forward(self, *inputs):
        return torch.full((len(inputs[0]), 1), float(torch.get_num_threads()))


@pytest.mark.parametrize("threads", [1, 3])
def test_torch_runtimes_compute_on_their_threads_and_restore_the_process_count(threads):
    before = torch.get_num_threads()
    towers = TorchTowers(ThreadCount(), ThreadCount(), threads)
    users, history = np.array([1, 2]), np.ones((2, 3), dtype=np.int64)
    assert towers.encode_users(users, history, history != 0).tolist() == [[threads]] * 2
    assert towers.encode_items(np.array([1])).tolist() == [[threads]]
    assert torch.get_num_threads() == before
    unpinned = TorchTowers(ThreadCount(), ThreadCount())  # None: torch's own count
    assert unpinned.encode_items(np.array([1])).tolist() == [[before]]


def test_model_towers_give_the_model_s_vectors():
    model = make_model(ENCODERS[0]).eval()
    towers = ModelTowers(model, threads=1)
    ids, mask = pad_left(HISTORIES, model.max_history_len)
    np.testing.assert_array_equal(
        towers.encode_users(np.array([1, 2, 0]), ids, mask),
        encode(model, [1, 2, 0], HISTORIES).numpy(),
    )
    with torch.no_grad():
        expected = model.encode_items(torch.arange(1, 21)).numpy()
    np.testing.assert_array_equal(towers.encode_items(np.arange(1, 21)), expected)
    assert towers.model is model


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_each_element_with_probability_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    dropout = Dropout(p)
    x = torch.ones(100_000, 4)
    out = dropout(x)
    dropped = out == 0
    bound = 6 * (p * (1 - p) / len(x)) ** 0.5  # six standard errors
    # each of the four 16-bit lanes of one 64-bit draw is its own fair coin
    for lane in range(4):
        assert abs(dropped[:, lane].float().mean().item() - p) < bound
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)))
    assert dropped.float().mean().item() == pytest.approx(p, abs=bound / 2)
    torch.manual_seed(0)
    assert torch.equal(dropout(x), out)  # the seed decides the masks
    assert torch.equal(dropout.eval()(x), x)
    assert Dropout(0.0).train()(x) is x
