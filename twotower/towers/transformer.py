"""The Transformer user encoder (DESIGN.md, "The model"; SASRec-style attention).

History tokens are the shared item embeddings plus learned positions (0 = the
oldest item of the window), run through pre-norm Transformer blocks, pooled,
joined with the user-ID embedding and projected.

With ``causal`` attention (the default) position t only sees items up to t,
so one pass over a window yields the user vector after every prefix
(``encode_sequence``), which is how sequence training gets ~25x more examples
per second than encoding each prefix separately. ``forward`` returns the
vector after the whole history, which equals the last position of
``encode_sequence``.

Every query may attend to itself, so no attention row is ever fully masked:
an all-padding history (a cold user) stays finite in exported graphs too.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import merge_heads, multi_head_attention, split_heads
from .user import UserHead, most_recent

POOLINGS = ("mean", "last")
BLOCKED = -1e9  # additive mask value: softmax gives it weight 0, yet nothing becomes NaN


class Block(nn.Module):
    """Pre-norm self-attention + GELU feed-forward, each with a residual."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )
        self.residual_dropout = nn.Dropout(dropout)
        self.attention_dropout = nn.Dropout(dropout)
        self.scale = (dim // num_heads) ** -0.5

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last_only: bool = False):
        """[B, L, d] -> [B, L, d]; with ``last_only``, only the last position: [B, 1, d].

        ``allowed`` is [B, 1, L, L]: bool (True = may attend) or an additive float mask.

        The last position still attends to every key, so its output is the same;
        skipping the other queries saves most of the final block at serving time.
        """
        dim = x.shape[-1]
        q, k, v = self.qkv(self.attention_norm(x)).split(dim, dim=-1)  # each [B, L, d]
        if last_only:
            q, allowed, x = q[:, -1:], allowed[:, :, -1:], x[:, -1:]  # queries: L -> 1
        if allowed.dtype == torch.bool:
            allowed = torch.zeros_like(allowed, dtype=x.dtype).masked_fill(~allowed, float("-inf"))
        if self.training and self.dropout > 0:
            attended = self.attention_with_dropout(q, k, v, allowed)
        else:
            attended = multi_head_attention(q, k, v, allowed, self.num_heads, self.scale)
        x = x + self.residual_dropout(self.projection(attended))
        return x + self.residual_dropout(self.feed_forward(self.feed_forward_norm(x)))

    def attention_with_dropout(self, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
        """Training's attention: dropout on the attention weights, written out.

        The same function as ``multi_head_attention`` plus dropout; kept
        explicit so training draws its dropout masks as the recorded runs did.
        """
        heads = self.num_heads
        q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
        scores = (q * self.scale) @ k.transpose(-2, -1) + allowed  # [B, H, Lq, L]
        weights = self.attention_dropout(torch.softmax(scores, dim=-1))
        return merge_heads(weights @ v)  # [B, Lq, d]


class TransformerEncoder(nn.Module):
    def __init__(self, config, item_embedding: nn.Embedding, num_users: int):
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {config.pooling!r}")
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.pooling = config.pooling
        self.causal = config.causal
        self.max_len = config.max_history_len
        self.position_embedding = nn.Embedding(config.max_history_len, dim)
        # [max_len, max_len] patterns sliced to the history length at run time
        # (buffers, not weights: they are not saved): a query may always see its
        # own position, and with causal attention never a later one
        steps = torch.arange(config.max_history_len)
        off_diagonal = (steps.unsqueeze(1) != steps.unsqueeze(0)).float()
        future = (steps.unsqueeze(1) < steps.unsqueeze(0)).float() * BLOCKED
        self.register_buffer("off_diagonal", off_diagonal, persistent=False)
        self.register_buffer("future", future, persistent=False)
        self.blocked = BLOCKED  # an attribute: TorchScript reads no global floats
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.dropout) for _ in range(config.num_layers)
        )
        self.output_norm = nn.LayerNorm(dim)
        self.head = UserHead(dim, num_users, config.use_user_id, config.dropout, config.normalize)

    def summaries(
        self, history: torch.Tensor, history_mask: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """[B, L, d]: the pooled history after each position (meaningful at valid ones).

        ``last_only`` (``last`` pooling only) returns just the final position, [B, 1, d].
        """
        history, mask = most_recent(history, history_mask, self.max_len)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, L], 0 = oldest item
        x = self.item_embedding(history) + self.position_embedding(positions)  # [B, L, d]
        x = self.input_dropout(x)
        allowed = self.attention_mask(mask, x.dtype)
        depth = len(self.blocks)
        for index, block in enumerate(self.blocks):
            x = block(x, allowed, last_only and index == depth - 1)
        x = self.output_norm(x)
        if self.pooling == "last":
            return x
        # mean over the valid positions seen so far (all of them when not causal)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        counts = mask.long().cumsum(dim=1).clamp(min=1).unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        if self.causal:
            return x.cumsum(dim=1) / counts
        return (x.sum(dim=1, keepdim=True) / counts[:, -1:]).expand_as(x)

    def attention_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, L, L] additive mask: 0 where query i may look at key j, ``BLOCKED`` where not.

        A padding key is blocked except for the query at its own position, so
        no row is ever fully blocked (a cold user stays finite); one mask serves
        every block and broadcasts over heads.
        """
        length = mask.shape[1]
        padding = (~mask).to(dtype).unsqueeze(1).unsqueeze(1) * self.blocked  # [B, 1, 1, L]
        blocked = padding * self.off_diagonal[:length, :length]
        if self.causal:
            blocked = blocked + self.future[:length, :length]
        return blocked

    def forward(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        summaries = self.summaries(history, history_mask, self.pooling == "last")
        return self.head(summaries[:, -1], user_ids)  # [B, d]

    def encode_sequence(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, L, d]: the user vector after each prefix of the history (causal only)."""
        summaries = self.summaries(history, history_mask)  # [B, L, d]
        users = user_ids.unsqueeze(1).expand(-1, summaries.shape[1])  # [B, L]
        return self.head(summaries, users)
