"""The Transformer's attention: the fused inference path computes what the written-out one does."""

import pytest
import torch

from twotower.towers.attention import multi_head_attention
from twotower.towers.transformer import BLOCKED, Block

DIM, HEADS, LENGTH = 16, 4, 6


def padding_mask(batch: int) -> torch.Tensor:
    """[B, 1, 1, L] additive: row b has b padding positions on the left (row 5: one item)."""
    padding = torch.arange(batch).unsqueeze(1) > torch.arange(LENGTH)
    return torch.where(padding, BLOCKED, 0.0)[:, None, None, :]


def full_mask(batch: int) -> torch.Tensor:
    """The same as a [B, 1, L, L] boolean mask with causality written in."""
    steps = torch.arange(LENGTH)
    items = padding_mask(batch) == 0  # [B, 1, 1, L]
    return items & (steps.unsqueeze(1) >= steps.unsqueeze(0))


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_the_written_out_attention(causal):
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.1).eval()  # eval: the dropout is the identity
    q, k, v = torch.randn(3, LENGTH, LENGTH, DIM).unbind(0)
    mask = padding_mask(LENGTH)
    fused = multi_head_attention(q, k, v, mask, causal, HEADS, block.scale)
    written = block.attention_with_dropout(q, k, v, mask, causal)
    assert fused.shape == (LENGTH, LENGTH, DIM)
    torch.testing.assert_close(fused, written, atol=1e-6, rtol=1e-5)
    # the last query alone sees every key, causal or not (the final block at serving time)
    last = multi_head_attention(q[:, -1:], k, v, mask, False, HEADS, block.scale)
    torch.testing.assert_close(last, written[:, -1:], atol=1e-6, rtol=1e-5)


def test_causal_attention_ignores_later_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, LENGTH, DIM).unbind(0)
    mask = padding_mask(1)
    before = multi_head_attention(q, k, v, mask, True, HEADS, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[:, 3:], v2[:, 3:] = torch.randn(2, 1, LENGTH - 3, DIM).unbind(0)
    after = multi_head_attention(q, k2, v2, mask, True, HEADS, 0.5)
    torch.testing.assert_close(after[:, :3], before[:, :3])
    assert not torch.allclose(after[:, 3:], before[:, 3:])


def test_a_block_in_training_with_dropout_uses_the_written_out_attention():
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.5).train()
    x, mask = torch.randn(2, LENGTH, DIM), padding_mask(2)
    torch.manual_seed(1)
    first = block(x, mask, causal=True)
    torch.manual_seed(1)
    assert torch.equal(first, block(x, mask, causal=True))  # same seed, same dropout masks
    block.eval()
    assert not torch.allclose(first, block(x, mask, causal=True))  # dropout applied in training


@pytest.mark.parametrize("last_only", [False, True])
def test_a_boolean_mask_means_the_same_as_padding_plus_causality(last_only):
    """Plugins may pass a full boolean [B, 1, L, L] mask instead."""
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.0).eval()
    x = torch.randn(3, LENGTH, DIM)
    with torch.no_grad():
        from_bool = block(x, full_mask(3), last_only)
        from_padding = block(x, padding_mask(3), last_only, causal=True)
    assert from_bool.shape == (3, 1 if last_only else LENGTH, DIM)
    for row in range(3):  # the item positions; padding positions are never read
        items = slice(-1, None) if last_only else slice(row, None)
        torch.testing.assert_close(from_bool[row, items], from_padding[row, items])
