"""Dropout that draws its random numbers cheaply: the towers' one dropout module.

PyTorch's ``nn.Dropout`` on CPU draws one Mersenne-Twister number per element
(``bernoulli_``, about 25 ns each on this project's 2-core benchmark machine):
with dropout 0.5 on every input and residual of a d=64 Transformer, that was a
fifth of a training step. ``Dropout`` draws 64 random bits per four elements
and keeps an element when its 16 bits clear a threshold, five times cheaper;
the drop probability is ``p`` rounded to a multiple of 1/65536, and kept
elements are scaled by the exact inverse of the rounded keep probability, so
the expected output is the input, as with ``nn.Dropout``.

It has no parameters or buffers, so checkpoints are unchanged, and it is the
identity in evaluation, so exported graphs hold no trace of it.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 1 << 16  # 16 random bits per element
LOWEST = -(1 << 63)  # random_ from here to the top draws every int64


class Dropout(nn.Module):
    """Zero each element with probability ``p`` in training; scale the rest by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        dropped = round(p * LEVELS)  # of LEVELS equally likely 16-bit values
        self.p = dropped / LEVELS
        # attributes: TorchScript reads no global numbers
        self.lowest = LOWEST
        self.threshold = dropped - LEVELS // 2  # int16 runs from -LEVELS / 2: keep at or above
        self.scale = 1.0 / (1.0 - self.p) if dropped < LEVELS else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        count = x.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device)
        words.random_(self.lowest, None)  # each of its four 16-bit lanes is uniform
        lanes = words.view(torch.int16)[:count].view(x.shape)
        return x * ((lanes >= self.threshold).to(x.dtype) * self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
