"""The two graphs every format exports, with positional tensor inputs.

``UserTower(user_ids[B] int64, history[B, L] int64, history_mask[B, L] bool)
-> user_vectors[B, d] float32`` and ``ItemTower(item_ids[N] int64) ->
item_vectors[N, d] float32``: the same signature as the Python model, no dicts.
"""

from __future__ import annotations

import torch
from torch import nn

USER_INPUTS = ("user_ids", "history", "history_mask")
USER_OUTPUTS = ("user_vectors",)
ITEM_INPUTS = ("item_ids",)
ITEM_OUTPUTS = ("item_vectors",)


class UserTower(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.user_tower

    def forward(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.encoder(user_ids, history, history_mask)


class ItemTower(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.tower = model.item_tower

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.tower(item_ids)


def towers(model) -> tuple[UserTower, ItemTower]:
    model = model.eval()
    return UserTower(model).eval(), ItemTower(model).eval()


def example_inputs(model, batch: int = 3, length: int = 4):
    """Example inputs with batch >= 2 and length >= 2, so no axis is fixed at 1."""
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(1, model.num_items + 1, (batch, length), generator=generator)
    history[0, :1] = 0  # one left-padded row
    user_ids = torch.arange(1, batch + 1) % (model.num_users + 1)
    item_ids = torch.arange(1, batch + 1) % (model.num_items + 1)
    return (user_ids, history, history != 0), (item_ids,)
