"""The Transformer's attention: one function, equal to attention written out, with dropout on
the attention weights in training, and an implementation an exporter may put in its place."""

import pytest
import torch

from twotower.towers.attention import multi_head_attention, replaced_by
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


def written_out(q, k, v, mask, causal: bool, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v per head, causality as -inf on later keys."""
    heads = [t.unflatten(-1, (HEADS, DIM // HEADS)).transpose(1, 2) for t in (q, k, v)]
    scores = (heads[0] * scale) @ heads[1].transpose(-2, -1) + mask  # [B, H, Lq, L]
    if causal:
        scores = scores + torch.full((LENGTH, LENGTH), float("-inf")).triu(1)
    return (torch.softmax(scores, dim=-1) @ heads[2]).transpose(1, 2).flatten(2)  # [B, Lq, d]


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_the_written_out_attention(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, LENGTH, LENGTH, DIM).unbind(0)
    mask, scale = padding_mask(LENGTH), (DIM // HEADS) ** -0.5
    fused = multi_head_attention(q, k, v, mask, causal, HEADS, scale)
    written = written_out(q, k, v, mask, causal, scale)
    assert fused.shape == (LENGTH, LENGTH, DIM)
    torch.testing.assert_close(fused, written, atol=1e-6, rtol=1e-5)
    # the last query alone sees every key, causal or not (the final block at serving time)
    last = multi_head_attention(q[:, -1:], k, v, mask, False, HEADS, scale)
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


def test_dropout_falls_on_the_attention_weights():
    """With every value row equal to c, attention gives c (its weights sum to 1); dropping
    weights gives multiples of c, 1/(1-p) times the kept weight, and c again on average."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, LENGTH, DIM).unbind(0)
    c = torch.randn(DIM)
    v = c.expand(4, LENGTH, DIM)
    mask, p = padding_mask(4), 0.5
    torch.testing.assert_close(multi_head_attention(q, k, v, mask, True, HEADS, 0.5), v)
    draws = torch.stack(
        [multi_head_attention(q, k, v, mask, True, HEADS, 0.5, dropout_p=p) for _ in range(400)]
    )  # [draws, B, L, d]
    per_head = draws.unflatten(-1, (HEADS, DIM // HEADS)) / c.view(HEADS, DIM // HEADS)
    factors = per_head[..., :1]  # one factor per (draw, row, position, head)
    torch.testing.assert_close(per_head, factors.expand_as(per_head), atol=1e-4, rtol=1e-4)
    assert (factors.amin() >= -1e-5) and (factors.amax() <= 1 / (1 - p) + 1e-4)
    assert (factors < 0.999).any() and (factors > 1.001).any()  # weights were dropped
    # unbiased: a factor averages 1 (each factor's spread is at most 1, over 400 draws 0.05)
    assert abs(factors.mean().item() - 1.0) < 0.02
    assert (factors.mean(dim=0) - 1.0).abs().amax() < 0.25


def test_training_attention_is_the_fused_kernels_softmax():
    """Training writes the softmax out (its weights go through the towers' dropout); with a
    probability that rounds to nothing it gives what the fused kernel gives."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, LENGTH, DIM).unbind(0)
    mask = padding_mask(4)
    fused = multi_head_attention(q, k, v, mask, True, HEADS, 0.5)
    written = multi_head_attention(q, k, v, mask, True, HEADS, 0.5, dropout_p=1e-9)
    torch.testing.assert_close(written, fused, atol=1e-6, rtol=1e-5)


def test_a_block_in_training_drops_attention_weights_reproducibly():
    torch.manual_seed(0)
    block = Block(DIM, HEADS, dropout=0.5).train()
    x, mask = torch.randn(2, LENGTH, DIM), padding_mask(2)
    torch.manual_seed(1)
    first = block(x, mask, causal=True)
    torch.manual_seed(1)
    assert torch.equal(first, block(x, mask, causal=True))  # same seed, same dropout masks
    block.eval()
    assert not torch.allclose(first, block(x, mask, causal=True))  # dropout applied in training
    first.sum().backward()  # the fused kernel trains: gradients reach the projection
    assert block.qkv.weight.grad is not None and block.qkv.weight.grad.abs().sum() > 0


def test_a_replacement_serves_inference_only():
    """An exporter's implementation is used without dropout; training keeps ``attend``."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, LENGTH, DIM).unbind(0)
    mask, calls = padding_mask(2), []

    def replacement(q, k, v, mask, causal, num_heads, scale):
        calls.append((causal, num_heads, scale))
        return torch.zeros_like(q)

    with replaced_by(replacement):
        assert torch.equal(multi_head_attention(q, k, v, mask, True, HEADS, 0.5), q * 0)
        trained = multi_head_attention(q, k, v, mask, True, HEADS, 0.5, dropout_p=0.1)
    assert calls == [(True, HEADS, 0.5)]
    assert trained.abs().sum() > 0
    assert not torch.equal(multi_head_attention(q, k, v, mask, True, HEADS, 0.5), q * 0)


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
