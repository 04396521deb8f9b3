"""Mask heads: a registry of the plugin's own, and DETR's mask head.

DETR's head = multi-head attention maps between each query's box embedding and the encoded image
(``MHAttentionMap``), then an FPN-style upsampler (``MaskHeadSmallConv``) over res4, res3, res2 that
gives one mask logit map per query at stride 4.

The upsampler computes DETR's function with less work (equal up to float rounding, tested against
DETR's formulation):

* its first convolution reads [projected image features (the same for every query of an image) | the
  query's attention maps]; by linearity it is one convolution over the image features, once per
  image, plus one over each query's M maps: the image features are never copied per query;
* each FPN step is ``conv3x3(adapter(fpn) + nearest_2x(x))``; by linearity ``conv3x3(adapter(fpn))``
  is computed once per image, and ``conv3x3(nearest_2x(x))`` is one 4x4 transposed convolution with
  stride 2 over the coarse ``x`` (:func:`up2_conv_weight`): 16 multiply-adds per coarse pixel and
  channel pair instead of 36, and no upsampled copy of ``x``. A fine size of 2s - 1 (odd input
  sizes) is the 2s result cropped, with its last row / column recomputed exactly; other size ratios,
  and traced / exported graphs (dynamic sizes), take DETR's formulation;
* on the CPU, rows run in chunks whose fine activations stay in cache, channels-last.

At inference (no autograd) the weights it reads (split, transposed, cast to the features' dtype) are
derived once and rebuilt when the parameters change; bf16 / fp16 features run the convolutions in
that dtype, while the attention maps (softmax) and the final mask logits stay float32.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from .inference_opt import DerivedTensors, autocast_off, is_tracing

MASK_HEAD_REGISTRY = Registry("DETR_MASK_HEAD")
MASK_HEAD_REGISTRY.__doc__ = """
Registry for DETR mask heads. A head is built as
``MASK_HEAD_REGISTRY.get(cfg.MODEL.MASK_HEAD.NAME)(cfg, input_shape)`` where input_shape maps
backbone feature names to ShapeSpec, and is called as ``head(features, batch_idx, query_idx)`` → (K,
H/4, W/4) mask logits of the K given queries, where ``features`` is the dict returned by
``DETR.forward`` (box_embed, memory, memory_mask, src_proj, backbone). A head whose
``supports_low_precision`` is True accepts bf16 / fp16 features (MODEL.DETR.TEST.PRECISION) and
returns float32 logits; others are given float32 features.
"""

# Rows of the upsampler per chunk on the CPU: about this many stride-4 pixels per chunk (3 rows at
# 800x1088), so that a chunk's finest activations stay in the cache.
CHUNK_PIXELS = 3 * 200 * 272


def build_mask_head(cfg, input_shape):
    name = cfg.MODEL.MASK_HEAD.NAME
    return MASK_HEAD_REGISTRY.get(name)(cfg, input_shape) if name else None


class MHAttentionMap(nn.Module):
    """Attention weights (no values) of each query over the encoded image.

    Softmax is joint over heads and positions; padding positions get zero weight. With
    ``scale_to_uniform`` the weights are multiplied by (heads x non-padded positions), so that
    uniform attention is 1 rather than 1 / (M h w); DETR's head leaves them summing to 1. Computed
    in the weights' dtype (float32) whatever the inputs' dtype, under autocast too; the softmax
    always in float32.
    """

    def __init__(
        self, query_dim, hidden_dim, num_heads, dropout=0.0, bias=True, scale_to_uniform=False
    ):
        super().__init__()
        self.num_heads = num_heads
        self.scale_to_uniform = scale_to_uniform
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        for lin in (self.q_linear, self.k_linear):
            nn.init.zeros_(lin.bias)
            nn.init.xavier_uniform_(lin.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q, k, mask=None):
        """q: (Q, C) queries of one image; k: (C, h, w) its encoded image; mask: (h, w) True on
        padding. Returns (Q, M, h, w)."""
        with autocast_off(q.device.type):
            return self._maps(q, k, mask)

    def _maps(self, q, k, mask):
        dtype = self.q_linear.weight.dtype
        q = self.q_linear(q.to(dtype))
        k = F.conv2d(k[None].to(dtype), self.k_linear.weight[:, :, None, None], self.k_linear.bias)[
            0
        ]
        c = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], self.num_heads, c)
        kh = k.reshape(self.num_heads, c, k.shape[-2], k.shape[-1])
        weights = torch.einsum("qnc,nchw->qnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[None, None], float("-inf"))
        weights = F.softmax(weights.flatten(1).float(), dim=-1).view(weights.shape)
        if self.scale_to_uniform:  # a tensor count: no host sync per image
            positions = weights[0, 0].numel() if mask is None else (~mask).sum()
            weights = weights * (self.num_heads * positions)
        return self.dropout(weights)


# Nearest 2x upsampling then a 3x3 convolution (padding 1) is a 4x4 transposed convolution with
# stride 2 and padding 1: per axis, output 2i takes rows i-1, i with taps (w0, w1 + w2) and output
# 2i + 1 takes rows i, i+1 with taps (w0 + w1, w2); as transposed-convolution kernel rows:
# (w2, w1 + w2, w0 + w1, w0).
_UP2_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def up2_conv_weight(weight):
    """(Cout, Cin, 3, 3) → (Cin, Cout, 4, 4) with ``conv_transpose2d(x, ., stride=2, padding=1) ==
    conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)``."""
    taps = torch.tensor(_UP2_TAPS, dtype=weight.dtype, device=weight.device)
    return torch.einsum("ky,lx,oiyx->iokl", taps, taps, weight)


def _up_mode(coarse, fine):
    """How an FPN step maps a coarse (h, w) onto a fine (H, W): "up2" (each H in 2h, 2h - 1 and each
    W likewise: the transposed convolution), "same" (no upsampling) or "interpolate" (DETR's
    formulation)."""
    if tuple(coarse) == tuple(fine):
        return "same"
    if all(f == 2 * c or (f == 2 * c - 1 and c >= 2) for c, f in zip(coarse, fine)):
        return "up2"
    return "interpolate"


def _up2_conv(x, weight, weight_t, size):
    """``conv2d(interpolate(x, size, mode="nearest"), weight, padding=1)`` (no bias) for a size of
    2h or 2h - 1 per axis: the transposed convolution, cropped; an odd size's last row / column
    (which reads the zero padding past the crop) recomputed on a two-row strip."""
    h, w = x.shape[-2:]
    out = F.conv_transpose2d(x, weight_t, stride=2, padding=1)
    if tuple(size) == (2 * h, 2 * w):
        return out
    out = out[..., : size[0], : size[1]].contiguous(memory_format=_memory_format(x))
    if size[0] == 2 * h - 1:  # the last two upsampled rows come from x's last two rows
        strip = F.interpolate(x[..., h - 2 :, :], size=(2, size[1]), mode="nearest")
        out[..., -1:, :] = F.conv2d(F.pad(strip, (0, 0, 0, 1)), weight, padding=(0, 1))
    if size[1] == 2 * w - 1:
        strip = F.interpolate(x[..., :, w - 2 :], size=(size[0], 2), mode="nearest")
        out[..., :, -1:] = F.conv2d(F.pad(strip, (0, 1, 0, 0)), weight, padding=(1, 0))
    return out


def _memory_format(x):
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


class _UpsamplerWeights:
    """The tensors the upsampler reads, in its compute dtype: lay1 split into its image-feature and
    attention-map input channels, the FPN convolutions also as 2x-upsampling transposed
    convolutions, out_lay in float32. From the parameters themselves when autograd records."""

    def __init__(self, head, dtype, split_at, cast_norms):
        def cast(t):
            if t is None or dtype is None:
                return t
            t = t.to(dtype)
            if t.dim() == 4 and t.device.type == "cpu":
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        def norm(gn):
            return (
                gn.num_groups,
                cast(gn.weight) if cast_norms else gn.weight,
                cast(gn.bias) if cast_norms else gn.bias,
                gn.eps,
            )

        w1 = head.lay1.weight
        self.lay1 = cast(w1) if split_at is None else None
        self.lay1_src = None if split_at is None else cast(w1[:, :split_at])
        self.lay1_maps = None if split_at is None else cast(w1[:, split_at:])
        self.lay1_bias = cast(head.lay1.bias)
        self.gn1, self.gn2 = norm(head.gn1), norm(head.gn2)
        self.lay2 = (cast(head.lay2.weight), cast(head.lay2.bias))
        self.blocks = []
        for adapter, lay, gn in (
            (head.adapter1, head.lay3, head.gn3),
            (head.adapter2, head.lay4, head.gn4),
            (head.adapter3, head.lay5, head.gn5),
        ):
            self.blocks.append(
                {
                    "adapter": (cast(adapter.weight), cast(adapter.bias)),
                    "weight": cast(lay.weight),
                    "weight_t": cast(up2_conv_weight(lay.weight)),
                    "bias": cast(lay.bias),
                    "norm": norm(gn),
                }
            )
        self.out = (head.out_lay.weight.float(), head.out_lay.bias.float())


class MaskHeadSmallConv(nn.Module):
    """FPN-style upsampler: conv-GroupNorm-ReLU blocks, with 1×1 adapters on finer backbone features
    added after nearest upsampling; one output channel (the mask logit) per input row, float32."""

    def __init__(self, dim, fpn_dims, context_dim):
        super().__init__()
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(8, inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self._derived = DerivedTensors()

    def forward(self, x, fpns, batch_idx):
        """x: (K, dim, h, w), one row per query; fpns: coarse-to-fine (B, C_i, H_i, W_i) backbone
        features; batch_idx: (K,) image of each row. Returns (K, 1, H_3, W_3) float32."""
        return self._run(None, x, fpns, batch_idx)

    def forward_split(self, src, maps, fpns, batch_idx, image_runs=None):
        """``forward(cat([src[batch_idx], maps], 1), fpns, batch_idx)`` without that concatenation:
        src: (B, C, h, w) the image features, the first C input channels of every row of image b;
        maps: (K, M, h, w) each row's own channels. The convolutions run in src's dtype.
        image_runs: the (start, end, image) runs of batch_idx when the caller knows them on the
        host (else the CPU path reads batch_idx)."""
        return self._run(src, maps, fpns, batch_idx, image_runs)

    def _weights(self, dtype, split_at, device):
        if torch.is_grad_enabled():
            # training: differentiable, from the parameters themselves (autocast casts them)
            return _UpsamplerWeights(self, None, split_at, False)
        # inference: derived once; the CPU GroupNorm takes bf16 input with float32 weights
        cast_norms = device.type != "cpu"
        return self._derived.get(
            [*self.parameters()],
            (dtype, split_at, device),
            lambda: _UpsamplerWeights(self, dtype, split_at, cast_norms),
        )

    def _run(self, src, maps, fpns, batch_idx, image_runs=None):
        """src None: maps holds each row's whole input (``forward``); else ``forward_split``'s."""
        ref = maps if src is None else src
        grad = torch.is_grad_enabled()
        dtype = ref.dtype
        split_at = None if src is None else src.shape[1]
        w = self._weights(dtype, split_at, ref.device)
        tracing = is_tracing()
        cpu = ref.device.type == "cpu" and not tracing
        fmt = torch.channels_last if cpu else torch.contiguous_format

        def prep(t):  # inputs in the compute dtype (inference; autocast casts in training)
            return t if grad else t.to(dtype=dtype, memory_format=fmt)

        # per image: lay1 over the image features, the adapters, and the FPN convolutions over them
        shared = None
        if src is not None:
            shared = F.conv2d(prep(src), w.lay1_src, w.lay1_bias, padding=1)
        coarse = tuple(ref.shape[-2:])
        steps = []
        for fpn, block in zip(fpns, w.blocks):
            cur = F.conv2d(prep(fpn), *block["adapter"])
            fine = tuple(cur.shape[-2:])
            mode = "interpolate" if tracing else _up_mode(coarse, fine)
            if mode == "up2":
                # conv(adapter + up(x)) = conv(adapter) + conv(up(x)): the first part once per image
                cur = F.conv2d(cur, block["weight"], block["bias"], padding=1)
            steps.append((mode, cur, block))
            coarse = fine

        def rows(lo, hi, image):
            """Mask logits of rows lo:hi; image: their one image, or None (batch_idx tells)."""

            def per_row(t):  # a per-image tensor for these rows: broadcast, or gathered
                if t.shape[0] == 1:
                    return t
                if image is not None:
                    return t[image : image + 1]
                return t[batch_idx[lo:hi]]

            if src is None:
                x = F.conv2d(prep(maps[lo:hi]), w.lay1, w.lay1_bias, padding=1)
            else:
                x = F.conv2d(prep(maps[lo:hi]), w.lay1_maps, None, padding=1)
                x = x + per_row(shared) if grad else x.add_(per_row(shared))
            x = F.relu_(F.group_norm(x, *w.gn1))
            x = F.relu_(F.group_norm(F.conv2d(x, *w.lay2, padding=1), *w.gn2))
            for mode, cur, block in steps:
                if mode == "up2":
                    x = _up2_conv(x, block["weight"], block["weight_t"], cur.shape[-2:])
                    x = x + per_row(cur) if grad else x.add_(per_row(cur))
                else:
                    if mode == "interpolate":
                        x = F.interpolate(x, size=cur.shape[-2:], mode="nearest")
                    x = F.conv2d(per_row(cur) + x, block["weight"], block["bias"], padding=1)
                x = F.relu_(F.group_norm(x, *block["norm"]))
            with autocast_off(x.device.type):  # float32 mask logits under autocast too
                return F.conv2d(x.float(), *w.out, padding=1)

        n = maps.shape[0]
        if not cpu or n == 0:
            return rows(0, n, None)
        # CPU: the rows of one image at a time, in chunks whose finest activations stay in cache
        finest = steps[-1][1].shape[-2] * steps[-1][1].shape[-1]
        chunk = max(1, CHUNK_PIXELS // max(1, finest))
        out = []
        runs = _image_runs(batch_idx) if image_runs is None else image_runs
        for start, end, image in runs:
            for lo in range(start, end, chunk):
                out.append(rows(lo, min(lo + chunk, end), image))
        return out[0] if len(out) == 1 else torch.cat(out)


def _rows_by_image(batch_idx, num_images):
    """(image, rows of batch_idx on that image, ascending) for each image that has rows. One host
    sync (the per-image row counts); traced graphs (export) take a ``nonzero`` per image instead,
    so that the row counts stay data-dependent in the graph."""
    if is_tracing():
        out = []
        for b in range(num_images):
            sel = (batch_idx == b).nonzero()[:, 0]
            if len(sel):
                out.append((b, sel))
        return out
    order = torch.argsort(batch_idx, stable=True)  # image by image, rows ascending in each
    counts = torch.bincount(batch_idx, minlength=num_images).tolist()
    return [(b, sel) for b, sel in enumerate(order.split(counts)) if counts[b]]


def _image_runs(batch_idx):
    """(start, end, image) of each run of equal consecutive values of batch_idx (a host sync)."""
    values = batch_idx.tolist()
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((start, i, values[start]))
            start = i
    return runs


@MASK_HEAD_REGISTRY.register()
class DetrMaskHead(nn.Module):
    """DETR's panoptic mask head: ``MHAttentionMap`` (N × M × H/32 × W/32) + ``MaskHeadSmallConv``.

    Runs on any subset of queries: each query's mask depends only on its own box embedding, so
    computing masks for a subset gives exactly the rows of the full computation. Accepts bf16 / fp16
    features (``supports_low_precision``): the upsampler's convolutions then run in that dtype; the
    attention maps and the returned logits are float32.
    """

    supports_low_precision = True

    @configurable
    def __init__(
        self,
        *,
        hidden_dim,
        nheads,
        fpn_dims,
        in_features=("res4", "res3", "res2"),
        scale_attention_maps=False,
    ):
        """
        Args:
            hidden_dim: the transformer's width (``MODEL.DETR.HIDDEN_DIM``).
            nheads: attention heads of the maps (``MODEL.DETR.NHEADS``).
            fpn_dims: channels of the backbone features ``in_features``, coarse to fine.
            in_features: the backbone features the upsampler reads, coarse to fine
                (``MODEL.MASK_HEAD.IN_FEATURES``).
            scale_attention_maps: ``MHAttentionMap``'s ``scale_to_uniform``
                (``MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS``).
        """
        super().__init__()
        self.in_features = list(in_features)
        if len(fpn_dims) != len(self.in_features):
            raise ValueError(
                f"DetrMaskHead: {len(fpn_dims)} fpn_dims for {len(self.in_features)} in_features"
            )
        self.bbox_attention = MHAttentionMap(
            hidden_dim, hidden_dim, nheads, dropout=0.0, scale_to_uniform=scale_attention_maps
        )
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, list(fpn_dims), hidden_dim)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """Keyword arguments from ``cfg`` (checked by ``validate_config``) and the backbone's
        ``input_shape`` (feature name → ShapeSpec)."""
        in_features = list(cfg.MODEL.MASK_HEAD.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.MASK_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"({sorted(input_shape)})"
            )
        return {
            "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM,
            "nheads": cfg.MODEL.DETR.NHEADS,
            "fpn_dims": [input_shape[f].channels for f in in_features],
            "in_features": in_features,
            "scale_attention_maps": cfg.MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS,
        }

    def forward(self, features, batch_idx, query_idx):
        """features: ``DETR.forward``'s feature dict; batch_idx, query_idx: (K,) image and query of
        each row. Returns (K, H/4, W/4) float32 mask logits, in the order of the rows."""
        box_embed, memory, memory_mask = (
            features["box_embed"],
            features["memory"],
            features["memory_mask"],
        )
        fpns = [features["backbone"][f] for f in self.in_features]
        rows = []
        for b, sel in _rows_by_image(batch_idx, box_embed.shape[0]):
            attn = self.bbox_attention(box_embed[b, query_idx[sel]], memory[b], memory_mask[b])
            rows.append((sel, attn, b))
        if not rows and not torch.is_grad_enabled():
            return box_embed.new_zeros((0, *self.output_size(features)), dtype=torch.float32)
        if not rows:
            # no rows (e.g. no matched query in a training batch): the head's own computation on
            # zero rows, (0, H/4, W/4), so that autograd (and DDP) reach each of its parameters
            attn = self.bbox_attention(box_embed[0, :0], memory[0], memory_mask[0])
            empty = self.mask_head.forward_split(features["src_proj"], attn, fpns, batch_idx[:0])
            return empty[:, 0]
        order = torch.cat([sel for sel, _, _ in rows])
        attn = torch.cat([a for _, a, _ in rows])  # (K, M, h, w), grouped by image
        b_sorted = batch_idx[order]
        runs, start = [], 0  # (start, end, image) of each image's rows, known on the host
        for sel, _, b in rows:
            runs.append((start, start + len(sel), b))
            start += len(sel)
        masks = self.mask_head.forward_split(
            features["src_proj"], attn, fpns, b_sorted, image_runs=runs
        )[:, 0]
        out = torch.empty_like(masks)
        out[order] = masks
        return out

    def output_size(self, features):
        """(H/4, W/4): the size of the finest feature the upsampler reads."""
        return tuple(features["backbone"][self.in_features[-1]].shape[-2:])
