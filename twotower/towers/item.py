"""The item tower: ``normalize(MLP(E_item(id) + sum_g E_genre(g)))``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mlp(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """The 2-layer GELU MLP both towers end with."""
    return nn.Sequential(
        nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
    )


class ItemTower(nn.Module):
    """Content-aware item tower; genres are a fixed multi-hot buffer, so only ids go in.

    The item-ID embedding table is shared with the user tower, which reads
    histories through it.
    """

    def __init__(
        self,
        item_embedding: nn.Embedding,
        item_genres: np.ndarray,
        dropout: float,
        normalize: bool = True,
    ):
        super().__init__()
        self.normalize = normalize
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.register_buffer("item_genres", torch.as_tensor(item_genres, dtype=torch.float32))
        num_genres = self.item_genres.shape[1]
        self.genre_embedding = nn.Linear(num_genres, dim, bias=False) if num_genres else None
        self.mlp = mlp(dim, dim, dropout)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(item_ids)  # [N, d]
        if self.genre_embedding is not None:
            x = x + self.genre_embedding(self.item_genres[item_ids])  # sum of genre vectors
        x = self.mlp(x)
        return unit_length(x) if self.normalize else x


def unit_length(vectors: torch.Tensor) -> torch.Tensor:
    """``F.normalize(vectors, dim=-1)`` written with a broadcast division.

    Same values; the exported graph divides by the [B, 1] norms directly
    instead of first expanding them to the vectors' shape.
    """
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp_min(1e-12)
