"""The two graphs every format exports, with positional tensor inputs.

``UserTower(user_ids[B] int64, history[B, L] int64, history_mask[B, L] bool)
-> user_vectors[B, d] float32`` and ``ItemTower(item_ids[N] int64) ->
item_vectors[N, d] float32``: the same signature as the Python model, no dicts.

Graphs are exported from a copy of the model in which every module that offers
``frozen()`` is replaced by what it returns: the same function of its inputs,
cheaper to run once training is over. The item embedding is one: in a graph it
is a single lookup table (the ID rows plus their genre sums, computed once)
instead of a lookup, a gather of genre rows and a matrix product per history
item.
"""

from __future__ import annotations

import copy

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
    """The two graphs' modules, over a frozen copy of ``model`` (``model`` is untouched)."""
    model = frozen(copy.deepcopy(model).eval())
    return UserTower(model).eval(), ItemTower(model).eval()


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with each submodule that offers ``frozen()`` replaced by its result, in
    place; a submodule shared by several parents stays one module shared by them."""
    replacements: dict[int, nn.Module] = {}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if callable(getattr(child, "frozen", None)):
                if id(child) not in replacements:
                    replacements[id(child)] = child.frozen().eval()
                setattr(parent, name, replacements[id(child)])
    return module


def example_inputs(model, batch: int = 3, length: int = 4):
    """Example inputs with batch >= 2 and length >= 2, so no axis is fixed at 1."""
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(1, model.num_items + 1, (batch, length), generator=generator)
    history[0, :1] = 0  # one left-padded row
    user_ids = torch.arange(1, batch + 1) % (model.num_users + 1)
    item_ids = torch.arange(1, batch + 1) % (model.num_items + 1)
    return (user_ids, history, history != 0), (item_ids,)
