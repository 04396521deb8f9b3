"""Transformer: shapes, padding invariance, decoder norm on every layer, pre-norm variant."""

import contextlib
from unittest import mock

import pytest
import torch

from detr_panoptic_d2.modeling import PositionEmbeddingSine, Transformer
from detr_panoptic_d2.modeling import transformer as transformer_module

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


# ---- attention paths in training: fused (CUDA) and explicit (CPU) --------------------------------
@contextlib.contextmanager
def attention_path(explicit):
    """Every attention of the transformer on one path, whatever the device."""
    with mock.patch.object(transformer_module, "_explicit_attention", lambda attn, q: explicit):
        yield


def test_training_takes_the_explicit_path_on_the_cpu_only():
    attn = torch.nn.MultiheadAttention(D, HEADS).train()
    x = torch.zeros(3, 1, D)
    assert transformer_module._explicit_attention(attn, x)
    assert not transformer_module._explicit_attention(attn, x.to("meta"))  # any other device
    assert not transformer_module._explicit_attention(attn.eval(), x)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_fused_and_explicit_attention_are_the_same_function_in_training(pre_norm):
    """Training mode, dropout 0 (both paths draw dropout differently): the same outputs and
    gradients, with the padding mask and a per-image decoder self-attention mask (training-only
    queries). The kernels sum in different orders: float32 rounding, a few ulps of outputs of
    order 1.

    The biases are made non-zero: at DETR's initialization (zero biases, zero decoder content) the
    first decoder self-attention gives exactly zero, whose LayerNorm (variance 0) multiplies the
    rounding differences of its input gradient by 1 / sqrt(eps), for either path."""
    torch.manual_seed(0)
    t = Transformer(D, HEADS, 2, 2, dim_feedforward=64, dropout=0.0, normalize_before=pre_norm)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    t.train()
    src, mask, query, pos = make_inputs()
    query_mask = torch.zeros(2, N, N, dtype=torch.bool)
    query_mask[1, :, 3:] = True  # image 1: queries 3.. hidden from every other query
    query_mask[1, torch.arange(N), torch.arange(N)] = False
    results = {}
    for explicit in (True, False):
        t.zero_grad(set_to_none=True)
        s = src.clone().requires_grad_(True)
        with attention_path(explicit):
            hs, memory = t(s, mask, query, pos, query_mask=query_mask)
        (hs.square().sum() + memory.sum()).backward()
        grads = {n: p.grad.clone() for n, p in t.named_parameters()}
        results[explicit] = (hs.detach(), memory.detach(), s.grad, grads)
    (hs_e, mem_e, gs_e, gp_e), (hs_f, mem_f, gs_f, gp_f) = results[True], results[False]
    torch.testing.assert_close(hs_f, hs_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mem_f, mem_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs_f, gs_e, rtol=1e-4, atol=1e-5)
    assert set(gp_f) == set(gp_e)
    for n in gp_e:
        torch.testing.assert_close(gp_f[n], gp_e[n], rtol=1e-4, atol=1e-5, msg=n)


def _saved_bytes(layer, x, pos):
    """Bytes of the distinct tensors autograd keeps for the backward of one layer's forward."""
    seen = {}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape))
        seen[key] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, pos=pos)
    return sum(seen.values())


def test_fused_attention_keeps_no_attention_matrix_for_backward():
    """One encoder layer in training at L = 256 tokens: the explicit path keeps the (B·H, L, L)
    attention weights for backward, the fused one O(B·L·C). Dropout 0: on the CPU, dropout inside
    the fused call takes PyTorch's math kernel, which materializes the weights (CUDA's fused
    kernels apply dropout inside the kernel)."""
    from detr_panoptic_d2.modeling.transformer import TransformerEncoderLayer

    length, batch, dim, heads = 256, 2, 64, 8
    torch.manual_seed(0)
    layer = TransformerEncoderLayer(dim, heads, dim_feedforward=128, dropout=0.0).train()
    x = torch.randn(length, batch, dim, requires_grad=True)
    pos = torch.randn(length, batch, dim)
    weights_bytes = batch * heads * length * length * 4
    with attention_path(True):
        explicit = _saved_bytes(layer, x, pos)
    with attention_path(False):
        fused = _saved_bytes(layer, x, pos)
    assert explicit >= weights_bytes  # the explicit path keeps the weights (and activations)
    assert fused < weights_bytes / 2  # the fused path keeps nothing of that size
    assert explicit > 2 * fused  # here 6.0 vs 2.0 MB; the ratio grows with L
    # what it does keep is activations: a few dozen (L, B, C)-sized tensors at most
    assert fused <= 32 * length * batch * dim * 4
