"""Dropout that draws its random numbers cheaply: the towers' one dropout module.

PyTorch's dropout on CPU draws one Mersenne-Twister number per element
(``bernoulli_``, about 20-25 ns each on this project's 2-core benchmark
machine, on one thread whatever the thread count): with dropout 0.5 on every
input, residual and attention weight of a d=64 Transformer, that was a
quarter of a training step. ``dropout`` draws 64 random bits per four
elements and keeps an element when its 16 bits clear a threshold, ten times
cheaper;
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


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled up."""
    dropped = round(p * LEVELS)  # of LEVELS equally likely 16-bit values
    if dropped == 0:
        return x
    if dropped >= LEVELS:
        return torch.zeros_like(x)
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(LOWEST, None)  # each of its four 16-bit lanes is uniform
    lanes = words.view(torch.int16)[:count].view(x.shape)
    kept = lanes >= dropped - LEVELS // 2  # int16 runs from -LEVELS / 2
    return x * (kept.to(x.dtype) * (LEVELS / (LEVELS - dropped)))


class Dropout(nn.Module):
    """``dropout`` in training, the identity otherwise (and in TorchScript, which serves)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.training:
            return dropout(x, self.p)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
