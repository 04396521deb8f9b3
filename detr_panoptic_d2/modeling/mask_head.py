"""Mask heads: a registry of the plugin's own, and DETR's mask head.

DETR's head = multi-head attention maps between each query's box embedding and the encoded image
(``MHAttentionMap``), then an FPN-style upsampler (``MaskHeadSmallConv``) over res4, res3, res2 that gives
one mask logit map per query at stride 4.
"""

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry
from torch import nn

MASK_HEAD_REGISTRY = Registry("DETR_MASK_HEAD")
MASK_HEAD_REGISTRY.__doc__ = """
Registry for DETR mask heads. A head is built as ``MASK_HEAD_REGISTRY.get(cfg.MODEL.MASK_HEAD.NAME)(cfg,
input_shape)`` where input_shape maps backbone feature names to ShapeSpec, and is called as
``head(features, batch_idx, query_idx)`` → (K, H/4, W/4) mask logits of the K given queries, where
``features`` is the dict returned by ``DETR.forward`` (box_embed, memory, memory_mask, src_proj, backbone).
"""


def build_mask_head(cfg, input_shape):
    name = cfg.MODEL.MASK_HEAD.NAME
    return MASK_HEAD_REGISTRY.get(name)(cfg, input_shape) if name else None


class MHAttentionMap(nn.Module):
    """Attention weights (no values) of each query over the encoded image.

    Softmax is joint over heads and positions; padding positions get zero weight. With
    ``scale_to_uniform`` the weights are multiplied by (heads x non-padded positions), so that uniform
    attention is 1 rather than 1 / (M h w); DETR's head leaves them summing to 1.
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
        """q: (Q, C) queries of one image; k: (C, h, w) its encoded image; mask: (h, w) True on padding.
        Returns (Q, M, h, w)."""
        q = self.q_linear(q)
        k = F.conv2d(k[None], self.k_linear.weight[:, :, None, None], self.k_linear.bias)[0]
        c = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], self.num_heads, c)
        kh = k.view(self.num_heads, c, k.shape[-2], k.shape[-1])
        weights = torch.einsum("qnc,nchw->qnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[None, None], float("-inf"))
        weights = F.softmax(weights.flatten(1), dim=-1).view(weights.shape)
        if self.scale_to_uniform:  # a tensor count: no host sync per image
            positions = weights[0, 0].numel() if mask is None else (~mask).sum()
            weights = weights * (self.num_heads * positions)
        return self.dropout(weights)


class MaskHeadSmallConv(nn.Module):
    """FPN-style upsampler: conv-GroupNorm-ReLU blocks, with 1×1 adapters on finer backbone features added
    after nearest upsampling; one output channel (the mask logit) per input row."""

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

    def forward(self, x, fpns, batch_idx):
        """x: (K, dim, h, w), one row per query; fpns: coarse-to-fine (B, C_i, H_i, W_i) backbone features;
        batch_idx: (K,) image of each row. Returns (K, 1, H_3, W_3)."""
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        blocks = (
            (self.adapter1, self.lay3, self.gn3),
            (self.adapter2, self.lay4, self.gn4),
            (self.adapter3, self.lay5, self.gn5),
        )
        for fpn, (adapter, lay, gn) in zip(fpns, blocks):
            cur_fpn = adapter(fpn)
            if cur_fpn.shape[0] > 1:  # one image broadcasts over its queries without a copy
                cur_fpn = cur_fpn[batch_idx]
            x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


@MASK_HEAD_REGISTRY.register()
class DetrMaskHead(nn.Module):
    """DETR's panoptic mask head: ``MHAttentionMap`` (N × M × H/32 × W/32) + ``MaskHeadSmallConv``.

    Runs on any subset of queries: each query's mask depends only on its own box embedding, so
    computing masks for a subset gives exactly the rows of the full computation.
    """

    def __init__(self, cfg, input_shape):
        super().__init__()
        hidden_dim, nheads = (
            cfg.MODEL.DETR.HIDDEN_DIM,
            cfg.MODEL.DETR.NHEADS,
        )  # checked by validate_config
        self.in_features = list(cfg.MODEL.MASK_HEAD.IN_FEATURES)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.MASK_HEAD.IN_FEATURES {missing} are not backbone outputs ({sorted(input_shape)})"
            )
        fpn_dims = [input_shape[f].channels for f in self.in_features]
        self.bbox_attention = MHAttentionMap(
            hidden_dim,
            hidden_dim,
            nheads,
            dropout=0.0,
            scale_to_uniform=cfg.MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS,
        )
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)

    def forward(self, features, batch_idx, query_idx):
        """features: ``DETR.forward``'s feature dict; batch_idx, query_idx: (K,) image and query of each row.
        Returns (K, H/4, W/4) mask logits, in the order of the rows."""
        box_embed, memory, memory_mask = (
            features["box_embed"],
            features["memory"],
            features["memory_mask"],
        )
        fpns = [features["backbone"][f] for f in self.in_features]
        rows = []
        for b in range(box_embed.shape[0]):
            sel = (batch_idx == b).nonzero()[:, 0]
            if len(sel):
                rows.append(
                    (
                        sel,
                        self.bbox_attention(
                            box_embed[b, query_idx[sel]], memory[b], memory_mask[b]
                        ),
                    )
                )
        if not rows:
            return box_embed.new_zeros((0, *self.output_size(features)))
        order = torch.cat([sel for sel, _ in rows])
        attn = torch.cat([a for _, a in rows])  # (K, M, h, w), grouped by image
        b_sorted = batch_idx[order]
        x = torch.cat([features["src_proj"][b_sorted], attn], dim=1)
        masks = self.mask_head(x, fpns, b_sorted)[:, 0]
        out = torch.empty_like(masks)
        out[order] = masks
        return out

    def output_size(self, features):
        """(H/4, W/4): the size of the finest feature the upsampler reads."""
        return tuple(features["backbone"][self.in_features[-1]].shape[-2:])
