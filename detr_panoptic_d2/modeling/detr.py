"""The DETR detector body: backbone, input projection, sine positional encoding, transformer, object
queries, class and box heads. ``DetrPanoptic`` wraps it with the mask head, as the original
``DETRsegm`` wraps ``DETR``."""

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import build_backbone
from torch import nn

from .backbone import downsample_padding_mask
from .checks import check_int
from .inference_opt import autocast_off
from .position_encoding import PositionEmbeddingSine
from .training_queries import TrainingQueries, split_training_outputs, wants_training_queries
from .transformer import Transformer


class MLP(nn.Module):
    """Feed-forward network with ReLU between layers (DETR's box head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim])
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class DETR(nn.Module):
    """Backbone + transformer + heads: N object queries → class logits and normalized cxcywh boxes.

    ``forward(images, padding_mask)`` returns ``(outputs, features)``:

    * ``outputs``: ``pred_logits`` (B, N, K+1) and ``pred_boxes`` (B, N, 4) of the last decoder
      layer, and ``aux_outputs`` (one such dict per earlier decoder layer) when ``aux_loss``;
    * ``features``: what a mask head reads: ``box_embed`` (B, N, C) (last decoder layer), ``memory``
      (B, C, h, w) (encoded image), ``memory_mask`` (B, h, w) (True on padding), ``src_proj`` (B, C,
      h, w) (projected backbone feature) and ``backbone`` (the backbone's feature dict, res2..res5).

    With ``training_queries`` (:mod:`.training_queries`: query groups, denoising queries), a
    training forward also runs those queries and ``outputs`` gains "group_outputs" / "dn_outputs";
    the entries above stay DETR's N queries. In eval mode the decoder sees the N queries alone.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        transformer,
        num_classes,
        num_queries,
        in_feature="res5",
        aux_loss=True,
        training_queries=None,
    ):
        super().__init__()
        check_int("DETR", "num_classes", "MODEL.DETR.NUM_CLASSES", num_classes, 1)
        check_int("DETR", "num_queries", "MODEL.DETR.NUM_OBJECT_QUERIES", num_queries, 1)
        self.backbone = backbone
        self.in_feature = in_feature
        hidden_dim = transformer.d_model
        self.input_proj = nn.Conv2d(
            backbone.output_shape()[in_feature].channels, hidden_dim, kernel_size=1
        )
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        # Registered even when None: a checkpoint's training-only keys are then ignored on load.
        self.register_module("training_queries", training_queries)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        backbone = build_backbone(cfg)
        if d.IN_FEATURE not in backbone.output_shape():
            raise ValueError(
                f"MODEL.DETR.IN_FEATURE={d.IN_FEATURE!r} is not a backbone output "
                f"(MODEL.RESNETS.OUT_FEATURES gives {sorted(backbone.output_shape())})"
            )
        transformer = Transformer(cfg)
        training_queries = None
        if wants_training_queries(
            d.GROUPS, d.DN.COPIES, d.DN.BOX_NOISE_SCALE, d.DN.LABEL_NOISE_RATIO
        ):
            training_queries = TrainingQueries(
                d.HIDDEN_DIM,
                d.NUM_OBJECT_QUERIES,
                d.NUM_CLASSES,
                groups=d.GROUPS,
                dn_copies=d.DN.COPIES,
                box_noise_scale=d.DN.BOX_NOISE_SCALE,
                label_noise_ratio=d.DN.LABEL_NOISE_RATIO,
            )
        return {
            "backbone": backbone,
            "transformer": transformer,
            "num_classes": d.NUM_CLASSES,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "in_feature": d.IN_FEATURE,
            "aux_loss": d.DEEP_SUPERVISION,
            "training_queries": training_queries,
        }

    def forward(self, images, padding_mask, targets=None, backbone=None):
        """images: (B, 3, H, W) normalized and padded; padding_mask: (B, H, W) bool, True on
        padding; targets: per image "labels" and normalized cxcywh "boxes" (denoising queries);
        backbone: what computes the backbone features instead of ``self.backbone`` (the inference
        plan's folded copy)."""
        features = (self.backbone if backbone is None else backbone)(images)
        src = features[self.in_feature]
        mask = downsample_padding_mask(padding_mask, src.shape[-2:])
        pos = self.position_embedding(mask).to(src.dtype)
        src_proj = self.input_proj(src)
        batch = None
        if self.training and self.training_queries is not None:
            batch = self.training_queries(self.query_embed.weight, targets, src.shape[0])
            hs, memory = self.transformer(
                src_proj, mask, batch.query_pos, pos, tgt=batch.tgt, query_mask=batch.attn_mask
            )  # (L, B, Q, C): DETR's N queries first
        else:
            hs, memory = self.transformer(
                src_proj, mask, self.query_embed.weight, pos
            )  # (L, B, N, C), (B, C, h, w)
        # float32 heads under a bf16 / fp16 body (a reduced-precision copy, or autocast)
        with autocast_off(hs.device.type):
            heads_in = hs.to(self.class_embed.weight.dtype)
            outputs_class = self.class_embed(heads_in)
            outputs_coord = self.bbox_embed(heads_in).sigmoid()
        extra = {}
        if batch is not None:
            outputs_class, outputs_coord, extra = split_training_outputs(
                outputs_class, outputs_coord, batch
            )
            hs = hs[:, :, : self.num_queries]
        outputs = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1], **extra}
        if self.aux_loss:
            outputs["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b}
                for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        return outputs, {
            "box_embed": hs[-1],
            "memory": memory,
            "memory_mask": mask,
            "src_proj": src_proj,
            "backbone": features,
        }
