"""The item embedding and the item tower built on it.

An item is its ID embedding plus the embeddings of its genres
(``ItemEmbedding``): content is added to the ID rather than mixed with it,
so a rarely seen item still has a meaningful vector. The same module reads
history items in the user tower and embeds candidates in the item tower, so
output embeddings are tied to input embeddings as in SASRec, and content
counts on both sides. The item tower is that embedding as it is (the
default), or through DESIGN.md's 2-layer MLP (``item_mlp``), which re-maps
every item and over-fits the table on a small catalog (README, "What cost
the test accuracy").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .dropout import Dropout


def mlp(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """The 2-layer GELU MLP of DESIGN.md's towers."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim))


class ItemEmbedding(nn.Module):
    """``E_item(id) + sum of E_genre(g)`` over the item's genres; id 0 (padding) gives zeros.

    Genres are a fixed multi-hot buffer, so only ids go in: histories and
    candidates alike are tensors of item indexes.
    """

    def __init__(self, num_items: int, dim: int, item_genres: np.ndarray):
        super().__init__()
        self.embedding_dim = dim
        self.ids = nn.Embedding(num_items + 1, dim, padding_idx=0)
        genres = torch.tensor(item_genres, dtype=torch.float32)
        genres[0] = 0.0  # the padding item has no genres, so padding stays zero
        self.register_buffer("item_genres", genres)
        num_genres = self.item_genres.shape[1]
        self.genres = nn.Embedding(num_genres, dim) if num_genres else None

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        x = self.ids(item_ids)  # [..., d]
        if self.genres is not None:
            # the sum of the item's genre vectors: multi-hot [..., G] @ [G, d]
            x = x + self.item_genres[item_ids] @ self.genres.weight
        return x

    @torch.no_grad()
    def frozen(self) -> nn.Embedding:
        """The same map as one table, for inference (exports use it): row ``i`` is item
        ``i``'s ID embedding plus its genre sum, computed once instead of per lookup."""
        table = self.forward(torch.arange(self.ids.num_embeddings))
        return nn.Embedding.from_pretrained(table, freeze=True, padding_idx=0)


class ItemTower(nn.Module):
    """``ItemEmbedding``, optionally through an MLP, optionally L2-normalised."""

    def __init__(
        self,
        item_embedding: ItemEmbedding,
        dropout: float,
        normalize: bool = True,
        use_mlp: bool = False,
    ):
        super().__init__()
        self.normalize = normalize
        self.item_embedding = item_embedding
        dim = item_embedding.embedding_dim
        self.mlp = mlp(dim, dim, dropout) if use_mlp else None

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(item_ids)  # [N, d]
        if self.mlp is not None:
            x = self.mlp(x)
        return unit_length(x) if self.normalize else x


def unit_length(vectors: torch.Tensor) -> torch.Tensor:
    """``F.normalize(vectors, dim=-1)`` written with a broadcast division.

    Same values; the exported graph divides by the [B, 1] norms directly
    instead of first expanding them to the vectors' shape.
    """
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp_min(1e-12)
