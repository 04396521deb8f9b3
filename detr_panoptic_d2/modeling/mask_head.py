"""Mask heads: a registry of the plugin's own, and DETR's mask head.

DETR's head = multi-head attention maps between each query's box embedding and the encoded image
(``MHAttentionMap``), then an FPN-style upsampler (``MaskHeadSmallConv``) over res4, res3, res2 that
gives one mask logit map per query at stride 4. ``MaskHeadSmallConv.forward`` is DETR's
formulation; ``DetrMaskHead`` runs the upsampler's fast kernel beside it
(:mod:`.mask_upsampler`: the same function with less work), from the parameters in training and
from weights prepared once (:meth:`DetrMaskHead.inference_weights`) at inference.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from .checks import check_arg
from .inference_opt import autocast_off, is_tracing
from .mask_upsampler import UpsamplerWeights, split_upsample

MASK_HEAD_REGISTRY = Registry("DETR_MASK_HEAD")
MASK_HEAD_REGISTRY.__doc__ = """
Registry for DETR mask heads. A head is built as
``MASK_HEAD_REGISTRY.get(cfg.MODEL.MASK_HEAD.NAME)(cfg, input_shape)`` where input_shape maps
backbone feature names to ShapeSpec, and is called as ``head(features, batch_idx, query_idx)`` → (K,
H/4, W/4) mask logits of the K given queries, where ``features`` is the dict returned by
``DETR.forward`` (box_embed, memory, memory_mask, src_proj, backbone). A head whose
``supports_low_precision`` is True accepts bf16 / fp16 features (MODEL.DETR.TEST.PRECISION) and
returns float32 logits; others are given float32 features. A head with an
``inference_weights(dtype)`` method gets what it returns back at inference, as
``head(features, batch_idx, query_idx, weights=...)`` (made once per inference plan).
"""


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


class MaskHeadSmallConv(nn.Module):
    """FPN-style upsampler: conv-GroupNorm-ReLU blocks, with 1×1 adapters on finer backbone features
    added after nearest upsampling; one output channel (the mask logit) per input row."""

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

    def fpn_steps(self):
        """(adapter, conv, norm) of each FPN step, coarse to fine."""
        return (
            (self.adapter1, self.lay3, self.gn3),
            (self.adapter2, self.lay4, self.gn4),
            (self.adapter3, self.lay5, self.gn5),
        )

    def forward(self, x, fpns, batch_idx):
        """DETR's formulation. x: (K, dim, h, w), one row per query; fpns: coarse-to-fine
        (B, C_i, H_i, W_i) backbone features; batch_idx: (K,) image of each row. Returns
        (K, 1, H_3, W_3)."""
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for fpn, (adapter, lay, gn) in zip(fpns, self.fpn_steps()):
            cur = adapter(fpn)[batch_idx]
            x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)

    def forward_split(self, src, maps, fpns, batch_idx, image_runs=None, weights=None):
        """``forward(cat([src[batch_idx], maps], 1), fpns, batch_idx)`` by the fast kernel
        (:func:`.mask_upsampler.split_upsample`), float32: src (B, C, h, w) the image features,
        the first C input channels of every row of image b; maps (K, M, h, w) each row's own.
        ``weights``: prepared :class:`.mask_upsampler.UpsamplerWeights` (inference); None: the
        parameters themselves (differentiable)."""
        if weights is None:
            weights = UpsamplerWeights(self, src.shape[1])
        return split_upsample(weights, src, maps, fpns, batch_idx, image_runs)


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
        # GroupNorm(8) down to hidden_dim / 16 channels, and over hidden_dim + nheads channels
        check_arg(
            hidden_dim % 128 == 0 and (hidden_dim + nheads) % 8 == 0,
            "DetrMaskHead",
            "hidden_dim",
            "MODEL.DETR.HIDDEN_DIM",
            (hidden_dim, nheads),
            "a multiple of 128, with HIDDEN_DIM + NHEADS a multiple of 8 (GroupNorm)",
        )
        check_arg(
            len(in_features) == 3,
            "DetrMaskHead",
            "in_features",
            "MODEL.MASK_HEAD.IN_FEATURES",
            list(in_features),
            "3 backbone features, coarse to fine (DetrMaskHead's upsampler)",
        )
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

    def inference_weights(self, dtype=torch.float32):
        """The upsampler's weights prepared for inference in ``dtype`` (the features' dtype):
        made now, never updated (:class:`.inference_plan.InferencePlan` holds them)."""
        split_at = self.mask_head.lay1.in_channels - self.bbox_attention.num_heads
        with torch.inference_mode(False), torch.no_grad():
            return UpsamplerWeights(self.mask_head, split_at, dtype)

    def forward(self, features, batch_idx, query_idx, weights=None):
        """features: ``DETR.forward``'s feature dict; batch_idx, query_idx: (K,) image and query of
        each row; weights: :meth:`inference_weights` (None: the parameters). Returns (K, H/4, W/4)
        float32 mask logits, in the order of the rows."""
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
            empty = self.mask_head.forward_split(
                features["src_proj"], attn, fpns, batch_idx[:0], weights=weights
            )
            return empty[:, 0]
        order = torch.cat([sel for sel, _, _ in rows])
        attn = torch.cat([a for _, a, _ in rows])  # (K, M, h, w), grouped by image
        b_sorted = batch_idx[order]
        runs, start = [], 0  # (start, end, image) of each image's rows, known on the host
        for sel, _, b in rows:
            runs.append((start, start + len(sel), b))
            start += len(sel)
        masks = self.mask_head.forward_split(
            features["src_proj"], attn, fpns, b_sorted, image_runs=runs, weights=weights
        )[:, 0]
        out = torch.empty_like(masks)
        out[order] = masks
        return out

    def output_size(self, features):
        """(H/4, W/4): the size of the finest feature the upsampler reads."""
        return tuple(features["backbone"][self.in_features[-1]].shape[-2:])
