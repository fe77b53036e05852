"""The item tower: ``E_item(id) + sum_g E_genre(g)``, optionally through a 2-layer MLP.

Without the MLP (the default) an item's vector is its ID embedding plus its
genres' embeddings: the same table the user tower reads histories through,
so the output side is tied to the input side as in SASRec, and content is
added to the ID rather than mixed with it. The MLP of DESIGN.md
(``item_mlp``) re-maps every item, which over-fits the ID table on a small
catalog (README, "What cost the test accuracy").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mlp(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """The 2-layer GELU MLP of DESIGN.md's towers."""
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
        use_mlp: bool = False,
    ):
        super().__init__()
        self.normalize = normalize
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.register_buffer("item_genres", torch.as_tensor(item_genres, dtype=torch.float32))
        num_genres = self.item_genres.shape[1]
        self.genre_embedding = nn.Embedding(num_genres, dim) if num_genres else None
        self.mlp = mlp(dim, dim, dropout) if use_mlp else None

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(item_ids)  # [N, d]
        if self.genre_embedding is not None:
            # the sum of the item's genre vectors: multi-hot [N, G] @ [G, d]
            x = x + self.item_genres[item_ids] @ self.genre_embedding.weight
        if self.mlp is not None:
            x = self.mlp(x)
        return unit_length(x) if self.normalize else x


def unit_length(vectors: torch.Tensor) -> torch.Tensor:
    """``F.normalize(vectors, dim=-1)`` written with a broadcast division.

    Same values; the exported graph divides by the [B, 1] norms directly
    instead of first expanding them to the vectors' shape.
    """
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp_min(1e-12)
