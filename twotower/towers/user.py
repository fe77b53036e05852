"""Pieces every built-in user encoder shares: the user-ID head and masked pooling."""

from __future__ import annotations

import torch
from torch import nn

from .dropout import Dropout
from .item import mlp, unit_length


class UserHead(nn.Module):
    """``summary + E_user(user_id)``, or ``MLP([summary ; E_user(user_id)])`` with ``use_mlp``.

    Without the MLP (the default) the history summary is the user vector, as
    in SASRec, and the user-ID embedding adds what the history does not say.
    The user-ID embedding goes through dropout like every other input: a
    table with one row per user otherwise memorises each user's training
    targets (README, "What cost the test accuracy").
    User index 0 is the unknown (cold) user: its embedding row is fixed at
    zero, so a cold user is described by the history alone.
    """

    def __init__(
        self,
        dim: int,
        num_users: int,
        use_user_id: bool,
        dropout: float,
        normalize: bool = True,
        use_mlp: bool = False,
    ):
        super().__init__()
        self.normalize = normalize
        self.user_embedding = (
            nn.Embedding(num_users + 1, dim, padding_idx=0) if use_user_id else None
        )
        self.user_dropout = Dropout(dropout)
        self.mlp = mlp(2 * dim if use_user_id else dim, dim, dropout) if use_mlp else None

    def forward(self, summary: torch.Tensor, user_ids: torch.Tensor) -> torch.Tensor:
        user = None
        if self.user_embedding is not None:
            user = self.user_dropout(self.user_embedding(user_ids))
        if self.mlp is not None:
            if user is not None:
                summary = torch.cat([summary, user], dim=-1)  # [B, 2d]
            summary = self.mlp(summary)
        elif user is not None:
            summary = summary + user
        return unit_length(summary) if self.normalize else summary

    @classmethod
    def from_config(cls, config, dim: int, num_users: int) -> UserHead:
        return cls(
            dim, num_users, config.use_user_id, config.dropout, config.normalize, config.user_mlp
        )


def most_recent(
    history: torch.Tensor, history_mask: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` columns: a longer history keeps its most recent items.

    A shape test rather than an unconditional slice: exported graphs declare
    history lengths up to ``max_len``, so the test is settled at export time
    and the graph carries no slicing.
    """
    if history.shape[1] > max_len:
        return history[:, -max_len:], history_mask[:, -max_len:]
    return history, history_mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[B, L, d]`` over valid positions; an empty row gives zeros.

    ``masked_fill`` (rather than multiplying by the mask) keeps an all-padding
    row finite in exported graphs.
    """
    summed = values.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)  # [B, d]
    count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(values.dtype)  # [B, 1]
    return summed / count
