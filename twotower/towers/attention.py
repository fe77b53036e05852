"""Multi-head scaled dot-product attention on [B, L, d] tensors, for training and inference.

One function: the fused ``scaled_dot_product_attention``; in training, which
drops attention weights with probability ``dropout_p`` (as
``nn.MultiheadAttention`` does), the same softmax written out, so that the
weights go through the towers' ``dropout`` (``towers/dropout.py``): the fused
kernel draws its dropout masks one Mersenne-Twister number per weight, a
tenth of a training step. An exporter may compute the inference function its
own way for the length of an export (``replaced_by``): the ONNX format writes
it as one standard ``Attention`` node (``twotower/export/onnx_attention.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .dropout import dropout

# (q, k, v, mask, causal, num_heads, scale) -> attended: the same function, computed another way
Implementation = Callable[[Tensor, Tensor, Tensor, Tensor, bool, int, float], Tensor]

_replacement: ContextVar[Implementation | None] = ContextVar("attention", default=None)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, L, d] -> [B, H, L, d/H]."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, d/H] -> [B, L, d]."""
    return x.transpose(1, 2).flatten(2)


def with_causal(mask: Tensor, length: int) -> Tensor:
    """``mask`` plus -inf on every later key, for L queries over the same L positions.

    -inf is safe: a query always keeps its own position (and earlier ones).
    """
    future = torch.full((length, length), float("-inf"), dtype=mask.dtype, device=mask.device)
    return mask + future.triu(1)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    causal: bool,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
) -> Tensor:
    """q [B, Lq, d], k and v [B, L, d], additive mask [B, 1, Lq or 1, L] -> [B, Lq, d].

    ``causal`` (queries and keys being the same L positions) also blocks later keys;
    ``dropout_p`` drops attention weights (training only).
    """
    if causal:
        mask = with_causal(mask, q.shape[1])
    q, k, v = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    if not torch.jit.is_scripting() and dropout_p > 0.0:  # TorchScript serves: no dropout
        weights = torch.softmax(q @ k.transpose(-2, -1) * scale + mask, dim=-1)
        return merge_heads(dropout(weights, dropout_p) @ v)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return merge_heads(attended)


def multi_head_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    causal: bool,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
) -> Tensor:
    """``attend``, or the implementation ``replaced_by`` put in place when no dropout applies.

    TorchScript compiles ``attend`` alone (it skips the branch it is not
    in), so its files hold standard operators only.
    """
    if not torch.jit.is_scripting():
        replacement = _replacement.get()
        if replacement is not None and dropout_p == 0.0:
            return replacement(q, k, v, mask, causal, num_heads, scale)
    return attend(q, k, v, mask, causal, num_heads, scale, dropout_p)


@contextlib.contextmanager
def replaced_by(implementation: Implementation) -> Iterator[None]:
    """Compute inference attention with ``implementation`` inside the block (in this thread).

    It must compute what ``attend`` does without dropout; training, which
    drops attention weights, keeps ``attend``.
    """
    token = _replacement.set(implementation)
    try:
        yield
    finally:
        _replacement.reset(token)
