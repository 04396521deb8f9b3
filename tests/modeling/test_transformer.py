"""Transformer: shapes, padding invariance, decoder norm on every layer, pre-norm variant."""

import pytest
import torch

from detr_panoptic_d2.modeling import PositionEmbeddingSine, Transformer

D, HEADS, N = 32, 4, 5


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(2, D, 4, 5, generator=g)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 3:, :] = True  # image 0: 3 x 3 valid
    mask[0, :, 3:] = True
    pos = PositionEmbeddingSine(D // 2)(mask)
    query = torch.randn(N, D, generator=g)
    return src, mask, query, pos


def build(pre_norm=False, enc=2, dec=3, seed=0):
    torch.manual_seed(seed)
    return Transformer(
        D, HEADS, enc, dec, dim_feedforward=64, dropout=0.1, normalize_before=pre_norm
    ).eval()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_output_shapes(pre_norm):
    t = build(pre_norm)
    src, mask, query, pos = make_inputs()
    hs, memory = t(src, mask, query, pos)
    assert hs.shape == (3, 2, N, D)  # (dec layers, B, N, C)
    assert memory.shape == src.shape
    assert (
        torch.isfinite(hs).all() and torch.isfinite(memory[~mask[:, None].expand_as(memory)]).all()
    )
    assert (t.encoder_norm is not None) == pre_norm
    assert len(t.encoder_layers) == 2 and len(t.decoder_layers) == 3


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padding_does_not_influence_valid_outputs(pre_norm):
    t = build(pre_norm)
    src, mask, query, pos = make_inputs()
    with torch.no_grad():
        hs, memory = t(src, mask, query, pos)
        pad = mask[:, None].expand_as(src)
        src2 = torch.where(pad, torch.randn_like(src) * 100, src)
        pos2 = torch.where(pad, torch.randn_like(pos), pos)
        hs2, memory2 = t(src2, mask, query, pos2)
    valid = ~pad
    torch.testing.assert_close(memory2[valid], memory[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs2, hs, atol=1e-5, rtol=1e-5)
    # sanity: the change did reach the padded positions of the memory
    assert not torch.allclose(memory2[pad], memory[pad])


def test_every_decoder_output_is_layer_normed():
    """Each intermediate decoder output goes through the shared final LayerNorm (weight 1, bias 0 at
    init)."""
    t = build()
    src, mask, query, pos = make_inputs()
    with torch.no_grad():
        hs, _ = t(src, mask, query, pos)
    torch.testing.assert_close(hs.mean(-1), torch.zeros(hs.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        hs.var(-1, unbiased=False), torch.ones(hs.shape[:-1]), atol=1e-3, rtol=0
    )


def test_queries_are_permutation_equivariant():
    t = build()
    src, mask, query, pos = make_inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        hs, _ = t(src, mask, query, pos)
        hs_p, _ = t(src, mask, query[perm], pos)
    torch.testing.assert_close(hs_p, hs[:, :, perm], atol=1e-5, rtol=1e-5)


def test_batch_elements_are_independent():
    t = build()
    src, mask, query, pos = make_inputs()
    with torch.no_grad():
        hs, memory = t(src, mask, query, pos)
        hs1, memory1 = t(src[1:], mask[1:], query, pos[1:])
    torch.testing.assert_close(hs1[:, 0], hs[:, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(memory1[0], memory[1], atol=1e-5, rtol=1e-5)


def test_train_mode_dropout_active_and_backward():
    t = build().train()
    src, mask, query, pos = make_inputs()
    src.requires_grad_(True)
    hs_a, _ = t(src, mask, query, pos)
    hs_b, _ = t(src, mask, query, pos)
    assert not torch.allclose(hs_a, hs_b)
    hs_a.sum().backward()
    assert torch.isfinite(src.grad).all()
