"""The GRU user encoder: the hidden state after the last valid history item.

``pack_padded_sequence`` does not export to ONNX, so the left-padded history
is rotated into right padding with a gather, run through the GRU, and the
output at the last valid step is gathered back. An empty history reads the
output after the padding token, which is finite.
"""

from __future__ import annotations

import torch
from torch import nn

from .dropout import Dropout
from .user import UserHead, most_recent


class GRUEncoder(nn.Module):
    def __init__(self, config, item_embedding: nn.Module, num_users: int):
        super().__init__()
        dim = item_embedding.embedding_dim
        self.item_embedding = item_embedding
        self.max_len = config.max_history_len
        self.dropout = Dropout(config.dropout)
        self.gru = nn.GRU(dim, dim, num_layers=config.num_layers, batch_first=True)
        self.head = UserHead.from_config(config, dim, num_users)

    def states(self, history: torch.Tensor, history_mask: torch.Tensor):
        """GRU outputs in right-padded order ([B, L, d], step j follows valid item j), lengths."""
        length = history.shape[1]
        lengths = history_mask.sum(dim=1)  # [B]
        # right-pad: row b reads columns (j + L - len_b) mod L
        steps = torch.arange(length, device=history.device).unsqueeze(0)  # [1, L]
        source = (steps + length - lengths.unsqueeze(1)) % length  # [B, L]
        right_padded = torch.gather(history, 1, source)
        outputs, _ = self.gru(self.dropout(self.item_embedding(right_padded)))  # [B, L, d]
        return outputs, lengths

    def forward(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        history, history_mask = most_recent(history, history_mask, self.max_len)
        outputs, lengths = self.states(history, history_mask)
        last = (lengths - 1).clamp(min=0)  # [B]
        index = last.view(-1, 1, 1).expand(-1, 1, outputs.shape[2])  # [B, 1, d]
        summary = torch.gather(outputs, 1, index).squeeze(1)  # [B, d]
        return self.head(summary, user_ids)

    def encode_sequence(
        self, user_ids: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, L, d]: the user vector after each prefix, back in left-padded positions."""
        outputs, lengths = self.states(history, history_mask)
        length = history.shape[1]
        steps = torch.arange(length, device=history.device).unsqueeze(0)  # [1, L]
        source = (steps + lengths.unsqueeze(1)) % length  # left position p <- step p + len - L
        index = source.unsqueeze(-1).expand(-1, -1, outputs.shape[2])  # [B, L, d]
        summaries = torch.gather(outputs, 1, index)
        return self.head(summaries, user_ids.unsqueeze(1).expand(-1, length))
