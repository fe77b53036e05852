"""Multi-head scaled dot-product attention on [B, L, d] tensors, for inference.

Eager PyTorch runs ``attend`` (one fused ``scaled_dot_product_attention``).
While exporting to ONNX the same computation goes through the
``twotower::attention`` operator, which the exporter writes as one standard
``Attention`` node (ONNX opset 23) taking the [B, L, d] tensors with the head
count as an attribute: no reshapes or transposes around it, which is most of
what a small Transformer's exported graph would otherwise run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, causal: bool, num_heads: int, scale: float
) -> Tensor:
    """q [B, Lq, d], k and v [B, L, d], additive mask [B, 1, Lq or 1, L] -> [B, Lq, d].

    ``causal`` (queries and keys being the same L positions) also blocks later keys.
    """
    if causal:
        mask = with_causal(mask, q.shape[1])
    q, k, v = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))


@torch.library.custom_op("twotower::attention", mutates_args=())
def attention_op(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, causal: bool, num_heads: int, scale: float
) -> Tensor:
    return attend(q, k, v, mask, causal, num_heads, scale)


@attention_op.register_fake
def _(q, k, v, mask, causal, num_heads, scale):
    return torch.empty_like(q)


def multi_head_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, causal: bool, num_heads: int, scale: float
) -> Tensor:
    """``attend``, routed through ``twotower::attention`` while exporting to ONNX.

    Other exports (TorchScript, ``torch.export``) and eager calls see only
    standard operators, so their files load without twotower.
    """
    if torch.jit.is_scripting():
        return attend(q, k, v, mask, causal, num_heads, scale)
    return attention_outside_torchscript(q, k, v, mask, causal, num_heads, scale)


@torch.jit.unused  # TorchScript cannot compile the export check; it never runs it
def attention_outside_torchscript(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, causal: bool, num_heads: int, scale: float
) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        return attention_op(q, k, v, mask, causal, num_heads, scale)
    return attend(q, k, v, mask, causal, num_heads, scale)


def attention_onnx(q, k, v, mask, causal: bool, num_heads: int, scale: float):
    """The ONNX translation of ``twotower::attention``: one opset-23 ``Attention`` node.

    Causality is the node's ``is_causal`` attribute, so the graph builds no
    [L, L] pattern.
    """
    from onnxscript import opset23 as op

    if causal:  # onnxruntime wants one mask row per query: [B, 1, 1, L] -> [B, 1, L, L]
        one = op.Constant(value_ints=[1])
        mask = op.Expand(mask, op.Concat(one, one, op.Shape(q, start=1, end=2), one, axis=0))
    attended, _, _, _ = op.Attention(
        q,
        k,
        v,
        mask,
        is_causal=int(causal),
        q_num_heads=num_heads,
        kv_num_heads=num_heads,
        scale=scale,
    )
    return attended
