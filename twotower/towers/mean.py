"""The bag-of-items user encoder: the mean of the history's item embeddings.

A fast baseline with no sequence model: it shows how much the Transformer
and GRU add.
"""

from __future__ import annotations

import torch
from torch import nn

from .dropout import Dropout
from .user import UserHead, masked_mean, most_recent


class MeanEncoder(nn.Module):
    def __init__(self, config, item_embedding: nn.Module, num_users: int):
        super().__init__()
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.max_len = config.max_history_len
        self.dropout = Dropout(config.dropout)
        self.head = UserHead.from_config(config, dim, num_users)

    def forward(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        history, history_mask = most_recent(history, history_mask, self.max_len)
        x = self.dropout(self.item_embedding(history))  # [B, L, d]
        return self.head(masked_mean(x, history_mask), user_ids)

    def encode_sequence(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, L, d]: the running mean after each prefix (the bag is order-free but causal)."""
        x = self.dropout(self.item_embedding(history))  # [B, L, d]
        x = x.masked_fill(~history_mask.unsqueeze(-1), 0.0)
        counts = history_mask.long().cumsum(dim=1).clamp(min=1).unsqueeze(-1).to(x.dtype)
        users = user_ids.unsqueeze(1).expand(-1, history.shape[1])  # [B, L]
        return self.head(x.cumsum(dim=1) / counts, users)
