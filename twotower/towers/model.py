"""TwoTowerModel: an item tower and a user encoder scored by ``u·v / τ``."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from ..errors import TwoTowerError, refused_as
from .item import ItemEmbedding, ItemTower


class TwoTowerModel(nn.Module):
    """The pair of towers and the learned temperature.

    ``encode_users`` and ``encode_items`` are the whole contract that
    training, evaluation and export call; both return L2-normalised vectors.
    """

    def __init__(
        self,
        config,
        num_users: int,
        num_items: int,
        item_genres: np.ndarray,
        encoder_class: type[nn.Module],
    ):
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.max_history_len = config.max_history_len
        features = item_genres if config.use_item_features else item_genres[:, :0]
        item_embedding = ItemEmbedding(num_items, config.embedding_dim, features)
        self.item_tower = ItemTower(
            item_embedding, config.dropout, config.normalize, config.item_mlp
        )
        with refused_as(f"user encoder {config.user_encoder!r} could not be built"):
            self.user_tower = encoder_class(config, item_embedding, num_users)
        self.encoder_name = config.user_encoder  # for errors about what the encoder returns
        initialise_embeddings(self, config.init_std)
        self.log_temperature = nn.Parameter(
            torch.tensor(math.log(config.temperature)), requires_grad=config.learn_temperature
        )
        self.temperature_range = (config.min_temperature, config.max_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        low, high = self.temperature_range
        return self.log_temperature.exp().clamp(low, high)

    @property
    def vector_dim(self) -> int:
        """The width of every user and item vector."""
        return self.item_tower.item_embedding.embedding_dim

    def check_user_vectors(self, vectors: object, rows: torch.Size, method: str = "") -> None:
        """The encoder's vectors are ``[*rows, d]`` in the model's dtype, as the item tower's
        are: anything else would fail deep in a loss or a matrix product, or score wrong."""
        shape, dtype = [*rows, self.vector_dim], self.log_temperature.dtype
        if isinstance(vectors, torch.Tensor):
            if list(vectors.shape) == shape and vectors.dtype == dtype:
                return
            got = f"a {vectors.dtype} tensor of shape {list(vectors.shape)}"
        else:
            got = f"a {type(vectors).__name__}"
        source = f"user encoder {self.encoder_name!r}" + (f" ({method})" if method else "")
        raise TwoTowerError(f"{source} returned {got}, not {dtype} vectors of shape {shape}")

    def encoder_failures(self, doing: str) -> AbstractContextManager[None]:
        """The block's exceptions as one error naming the user encoder (a plugin) and
        what it was ``doing``: the user sees one line, as for any plugin that fails."""
        return refused_as(f"user encoder {self.encoder_name!r} failed {doing}")

    def encode_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.item_tower(item_ids)  # [N, d]

    def encode_users(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.user_tower(user_ids, history, history_mask)  # [B, d]

    @torch.no_grad()
    def catalog_vectors(self, batch_size: int = 4096) -> torch.Tensor:
        """Vectors of items 1..N (row i is item index i + 1)."""
        ids = torch.arange(1, self.num_items + 1, device=self.log_temperature.device)
        return torch.cat([self.encode_items(chunk) for chunk in ids.split(batch_size)])


@torch.no_grad()
def initialise_embeddings(model: nn.Module, std: float) -> None:
    """Every embedding table of both towers from N(0, std²); padding rows stay zero.

    ``nn.Embedding`` starts at N(0, 1): item vectors then dwarf what the
    Transformer adds to them, and the tied output scores start saturated.
    A small scale (SASRec's 0.02) lets training shape the table.
    """
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
