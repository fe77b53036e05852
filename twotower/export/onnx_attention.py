"""The Transformer's attention in ONNX: one standard ``Attention`` node (opset 23) per block.

While the onnx format exports (``one_node``), inference attention
(``twotower.towers.attention``) goes through the ``twotower::attention``
operator, whose translation (``TRANSLATIONS``) writes one ``Attention`` node
taking the [B, L, d] tensors with the head count as an attribute: no
reshapes or transposes around it, which is most of what a small
Transformer's exported graph would otherwise run. Other exports and eager
calls never see the operator, so their files load without twotower.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..towers.attention import attend, replaced_by


@torch.library.custom_op("twotower::attention", mutates_args=())
def attention_op(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, causal: bool, num_heads: int, scale: float
) -> Tensor:
    return attend(q, k, v, mask, causal, num_heads, scale)


@attention_op.register_fake
def _(q, k, v, mask, causal, num_heads, scale):
    return torch.empty_like(q)


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


TRANSLATIONS = {torch.ops.twotower.attention.default: attention_onnx}


def one_node():
    """Inside this block, inference attention is the operator ``TRANSLATIONS`` writes."""
    return replaced_by(attention_op)
