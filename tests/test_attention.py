"""The Transformer's attention: the fused inference path computes what the written-out one does."""

import pytest
import torch

from twotower.towers.attention import multi_head_attention
from twotower.towers.transformer import BLOCKED, Block

DIM, HEADS, LENGTH = 16, 4, 6


def additive(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, BLOCKED)


def structured_mask(batch: int) -> torch.Tensor:
    """[B, 1, L, L]: causal, left padding of 0..L-1 items, every query sees itself."""
    steps = torch.arange(LENGTH)
    padding = torch.arange(batch).unsqueeze(1) > steps  # row b has b padding positions
    allowed = (~padding).unsqueeze(1) | torch.eye(LENGTH, dtype=torch.bool)
    allowed = allowed & (steps.unsqueeze(1) >= steps.unsqueeze(0))
    return allowed.unsqueeze(1)


def test_fused_attention_equals_the_written_out_attention():
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.1).eval()  # eval: the dropout is the identity
    q, k, v = torch.randn(3, LENGTH, LENGTH, DIM).unbind(0)  # batch of 6 = padding 0..5
    mask = additive(structured_mask(LENGTH))
    fused = multi_head_attention(q, k, v, mask, HEADS, block.scale)
    written = block.attention_with_dropout(q, k, v, mask)
    assert fused.shape == (LENGTH, LENGTH, DIM)
    torch.testing.assert_close(fused, written, atol=1e-6, rtol=1e-5)
    # one query row against all keys (the final block at serving time)
    last = multi_head_attention(q[:, -1:], k, v, mask[:, :, -1:], HEADS, block.scale)
    torch.testing.assert_close(last, written[:, -1:], atol=1e-6, rtol=1e-5)


def test_a_block_in_training_with_dropout_uses_the_written_out_attention():
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.5).train()
    x, mask = torch.randn(2, LENGTH, DIM), additive(structured_mask(2))
    torch.manual_seed(1)
    first = block(x, mask)
    torch.manual_seed(1)
    assert torch.equal(first, block(x, mask))  # same seed, same dropout masks
    block.eval()
    assert not torch.allclose(first, block(x, mask))  # dropout really applied in training


@pytest.mark.parametrize("last_only", [False, True])
def test_boolean_and_additive_masks_agree(last_only):
    """Plugins may pass a boolean mask; it means the same as the additive one."""
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.0).eval()
    x, allowed = torch.randn(3, LENGTH, DIM), structured_mask(3)
    with torch.no_grad():
        from_bool = block(x, allowed, last_only)
        from_additive = block(x, additive(allowed), last_only)
    assert from_bool.shape == (3, 1 if last_only else LENGTH, DIM)
    torch.testing.assert_close(from_bool, from_additive)
