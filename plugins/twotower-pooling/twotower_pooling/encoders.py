"""Bidirectional Transformer user encoders with learned pooling.

Both read a history the way twotower's built-in Transformer does (the item
embeddings shared with the item tower, learned positions counted from the
oldest item, the pre-norm ``Block`` of ``twotower.towers.transformer``, the
``UserHead``), but every item attends to every other one. So there is no
per-prefix ``encode_sequence``, and twotower trains them in prefix mode.

- ``transformer-cls``: a learned [CLS] token is appended after the most
  recent item; its output is the summary (BERT's pooling).
- ``transformer-attention``: a learned query attends over the outputs,
  masked to the valid positions (attention pooling with one seed, as in the
  Set Transformer's PMA).

Every token may attend to itself, so no attention row is ever fully masked
and an all-padding history (a cold user) stays finite, in PyTorch and in
exported ONNX graphs alike.
"""

from __future__ import annotations

import torch
from torch import nn
from twotower.towers.transformer import Block, check_heads
from twotower.towers.user import UserHead


class PooledTransformer(nn.Module):
    """History tokens -> bidirectional blocks -> ``summarize`` -> user head.

    Subclasses implement ``summarize(history, mask) -> [B, d]``.
    """

    check_config = staticmethod(check_heads)  # twotower asks before any data is read

    def __init__(self, config, item_embedding: nn.Module, num_users: int):
        super().__init__()
        check_heads(config)
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.max_len = config.max_history_len
        self.position_embedding = nn.Embedding(config.max_history_len, dim)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.dropout) for _ in range(config.num_layers)
        )
        self.output_norm = nn.LayerNorm(dim)
        self.head = UserHead.from_config(config, dim, num_users)

    def tokens(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, d]: item embeddings plus positions (0 = the oldest item of the window)."""
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
        return self.item_embedding(history) + self.position_embedding(positions)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, T, d]: attention among the valid tokens, each also sees itself."""
        steps = torch.arange(x.shape[1], device=x.device)
        itself = steps.unsqueeze(1) == steps.unsqueeze(0)  # [T, T]
        allowed = (mask.unsqueeze(1) | itself).unsqueeze(1)  # [B, 1, T(query), T(key)]
        x = self.input_dropout(x)
        for block in self.blocks:
            x = block(x, allowed)
        return self.output_norm(x)

    def summarize(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        history = history[:, -self.max_len :]  # longer histories keep their recent items
        mask = history_mask[:, -self.max_len :]
        return self.head(self.summarize(history, mask), user_ids)  # [B, d]


class TransformerCLS(PooledTransformer):
    """The output of a learned token placed after the most recent item."""

    def __init__(self, config, item_embedding: nn.Module, num_users: int):
        super().__init__(config, item_embedding, num_users)
        self.cls = nn.Parameter(0.02 * torch.randn(item_embedding.embedding_dim))

    def summarize(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(history, mask)  # [B, L, d]
        cls = self.cls.expand(x.shape[0], 1, -1)  # [B, 1, d]
        x = torch.cat([x, cls], dim=1)  # [B, L + 1, d]: histories are left-padded
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, L + 1]
        return self.encode(x, mask)[:, -1]  # [B, d]


class TransformerAttention(PooledTransformer):
    """A learned query's attention-weighted sum of the outputs at valid positions."""

    def __init__(self, config, item_embedding: nn.Module, num_users: int):
        super().__init__(config, item_embedding, num_users)
        dim = item_embedding.embedding_dim
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.key = nn.Linear(dim, dim)
        self.scale = dim**-0.5

    def summarize(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.encode(self.tokens(history, mask), mask)  # [B, L, d]
        logits = (self.key(x) @ self.query) * self.scale  # [B, L]
        # a finite floor rather than -inf: a cold user's row of all padding gets
        # uniform weights, zeroed next, instead of 0/0 (a literal, not torch.finfo,
        # so that TorchScript can compile it)
        logits = logits.masked_fill(~mask, -1e30)
        weights = torch.softmax(logits, dim=1).masked_fill(~mask, 0.0)  # [B, L]
        return (weights.unsqueeze(-1) * x).sum(dim=1)  # [B, d], zeros for a cold user
