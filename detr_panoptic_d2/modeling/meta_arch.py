"""DETR panoptic meta-architecture for Detectron2."""
import logging
import os

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from .backbone import build_detr_backbone, downsample_padding_mask
from .box_ops import cxcywh_to_xyxy, xyxy_to_cxcywh
from .criterion import SetCriterion
from .mask_head import build_mask_head
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .postprocess import maskformer_merge, panoptic_merge, select_queries, upsample_masks
from .transformer import Transformer

logger = logging.getLogger(__name__)


class MLP(nn.Module):
    """Feed-forward network with ReLU between layers (DETR's box head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def is_thing_from_metadata(dataset_names, num_classes):
    """(K,) bool: which contiguous classes are things, from the first of the data sets whose metadata has
    ``thing_dataset_id_to_contiguous_id``; None when none has it (yet)."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            continue
        things = set(meta.thing_dataset_id_to_contiguous_id.values())
        all_ids = set(things) | set(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}).values())
        if all_ids and max(all_ids) >= num_classes:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES={num_classes} but data set {name!r} has contiguous class ids up to "
                f"{max(all_ids)}: set MODEL.DETR.NUM_CLASSES to at least {max(all_ids) + 1}"
            )
        is_thing = torch.zeros(num_classes, dtype=torch.bool)
        is_thing[list(things)] = True
        return is_thing
    return None


@META_ARCH_REGISTRY.register()
class DetrPanoptic(nn.Module):
    """DETR (backbone + transformer + set prediction) with an optional mask head for panoptic segmentation.

    Training input: Detectron2 dicts with "image" (C, H, W) and "instances" (gt_boxes XYXY absolute,
    gt_classes contiguous, gt_masks for stage 2). Inference output per image: "instances" (boxes, scores,
    classes; masks for thing classes with a mask head) and "panoptic_seg" (with a mask head).
    """

    @configurable
    def __init__(
        self, *, backbone, transformer, num_classes, num_queries, criterion, mask_head=None,
        in_feature="res5", pixel_mean, pixel_std, aux_loss=True, is_thing=None, metadata_names=(),
        object_mask_threshold=0.85, min_segment_area=4, stuff_merge="first", panoptic_merge_mode="detr",
        overlap_threshold=0.8, panoptic_on=True, instance_on=True, masks_for_kept_only=True,
        train_matched_only=True, frozen_weights="",
    ):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        hidden_dim = transformer.d_model
        self.input_proj = nn.Conv2d(backbone.output_shape()[in_feature].channels, hidden_dim, kernel_size=1)
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.mask_head = mask_head
        self.criterion = criterion
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # Thing/stuff split of the classes: given, or read from the data sets' metadata (again at the first
        # inference when they were registered after the model was built).
        self.metadata_names = tuple(metadata_names)
        self._is_thing_known = is_thing is not None
        if is_thing is None:
            is_thing = is_thing_from_metadata(self.metadata_names, num_classes)
            self._is_thing_known = is_thing is not None
            if is_thing is None:
                is_thing = torch.ones(num_classes, dtype=torch.bool)
        self.register_buffer("is_thing", is_thing, False)
        self.object_mask_threshold = object_mask_threshold
        self.min_segment_area = min_segment_area
        self.stuff_merge = stuff_merge
        if panoptic_merge_mode not in ("detr", "maskformer"):
            raise ValueError(
                f"MODEL.DETR.TEST.PANOPTIC_MERGE must be 'detr' or 'maskformer', got {panoptic_merge_mode!r}"
            )
        if not 0.0 <= overlap_threshold <= 1.0:
            raise ValueError(f"MODEL.DETR.TEST.OVERLAP_THRESHOLD must be in [0, 1], got {overlap_threshold!r}")
        self.panoptic_merge_mode = panoptic_merge_mode
        self.overlap_threshold = overlap_threshold
        self.panoptic_on = panoptic_on and mask_head is not None
        self.instance_on = instance_on
        self.masks_for_kept_only = masks_for_kept_only
        self.train_matched_only = train_matched_only
        self.frozen = bool(frozen_weights)
        if self.frozen:
            self._load_and_freeze(frozen_weights)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        backbone = build_detr_backbone(cfg)
        transformer = Transformer(
            d_model=d.HIDDEN_DIM, nhead=d.NHEADS, num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS, dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT,
            normalize_before=d.PRE_NORM,
        )
        mask_head = build_mask_head(cfg, backbone.output_shape())
        weight_dict = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT,
                       "loss_mask": d.MASK_WEIGHT, "loss_dice": d.DICE_WEIGHT}
        matcher = HungarianMatcher(cost_class=d.COST_CLASS, cost_bbox=d.COST_BBOX, cost_giou=d.COST_GIOU)
        criterion = SetCriterion(
            d.NUM_CLASSES, matcher, weight_dict, eos_coef=d.NO_OBJECT_WEIGHT, focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA, box_losses=not d.FROZEN_WEIGHTS,
        )
        t = d.TEST
        return {
            "backbone": backbone, "transformer": transformer, "num_classes": d.NUM_CLASSES, "in_feature": d.IN_FEATURE,
            "num_queries": d.NUM_OBJECT_QUERIES, "criterion": criterion, "mask_head": mask_head,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": d.DEEP_SUPERVISION, "metadata_names": list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN),
            "object_mask_threshold": t.OBJECT_MASK_THRESHOLD, "min_segment_area": t.MIN_SEGMENT_AREA,
            "stuff_merge": t.STUFF_MERGE, "panoptic_merge_mode": t.PANOPTIC_MERGE,
            "overlap_threshold": t.OVERLAP_THRESHOLD, "panoptic_on": t.PANOPTIC_ON, "instance_on": t.INSTANCE_ON,
            "masks_for_kept_only": t.MASKS_FOR_KEPT_ONLY,
            "train_matched_only": cfg.MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY, "frozen_weights": d.FROZEN_WEIGHTS,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ---- stage 2: frozen detection part ------------------------------------------------------------
    def detection_modules(self):
        return [m for name, m in self.named_children() if name not in ("mask_head", "criterion")]

    def _load_and_freeze(self, path):
        """Load a stage-1 checkpoint of this plugin into everything but the mask head, then freeze it."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.DETR.FROZEN_WEIGHTS: no such file: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RuntimeError(f"MODEL.DETR.FROZEN_WEIGHTS: cannot read checkpoint {path}: {e}") from e
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"MODEL.DETR.FROZEN_WEIGHTS: {path} holds no state dict")
        state = {k: v for k, v in state.items() if not k.startswith(("mask_head.", "criterion."))}
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("mask_head.")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or shape:
            raise ValueError(
                f"MODEL.DETR.FROZEN_WEIGHTS: {path} does not match the detection part of the model: "
                f"missing keys {missing[:20]}, unexpected keys {unexpected[:20]}, shape mismatch {shape[:20]}"
            )
        self.load_state_dict(state, strict=False)
        for m in self.detection_modules():
            for p in m.parameters():
                p.requires_grad_(False)
        logger.info(f"Loaded and froze the detection part from {path}")

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:  # BN and dropout of the frozen part stay as in eval
            for m in self.detection_modules():
                m.train(False)
        return self

    # ---- forward ------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        mask = torch.ones(images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask  # mask: (B, H_pad, W_pad), True on padding

    def detect(self, images, mask):
        """Backbone + transformer + heads. Returns (outputs dict, state for the mask head)."""
        features = self.backbone(images.tensor)
        src = features[self.in_feature]
        m = downsample_padding_mask(mask, src.shape[-2:])
        pos = self.position_embedding(m).to(src.dtype)
        src_proj = self.input_proj(src)
        hs, memory = self.transformer(src_proj, m, self.query_embed.weight, pos)  # (L, B, N, C), (B, C, h, w)
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        state = {"box_embed": hs[-1], "memory": memory, "memory_mask": m, "src_proj": src_proj, "features": features}
        return out, state

    def predict_masks(self, state, batch_idx, query_idx):
        """Mask logits (K, H/4, W/4) of the given queries."""
        return self.mask_head(
            state["box_embed"], state["memory"], state["memory_mask"], state["src_proj"], state["features"],
            (batch_idx, query_idx),
        )

    def forward(self, batched_inputs):
        if not self.training:
            with torch.inference_mode():
                images, mask = self.preprocess_image(batched_inputs)
                outputs, state = self.detect(images, mask)
                return self.inference(batched_inputs, images, outputs, state)
        images, mask = self.preprocess_image(batched_inputs)
        if self.frozen:
            with torch.no_grad():
                outputs, state = self.detect(images, mask)
        else:
            outputs, state = self.detect(images, mask)
        return self.losses(batched_inputs, images, outputs, state)

    def prepare_targets(self, batched_inputs, images):
        targets = []
        hp, wp = images.tensor.shape[-2:]
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            if "instances" not in x:
                raise ValueError(f"training input {x.get('file_name', '?')} has no 'instances'")
            inst = x["instances"].to(self.device)
            boxes = inst.gt_boxes.tensor.clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            # DETR drops degenerate boxes (no area after clipping).
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=self.device)
            t = {"labels": inst.gt_classes[keep], "boxes": xyxy_to_cxcywh(boxes[keep] / scale)}
            if self.mask_head is not None and inst.has("gt_masks"):
                gm = inst.gt_masks
                gm = gm.tensor if hasattr(gm, "tensor") else gm
                gm = gm[keep]
                padded = torch.zeros((gm.shape[0], hp, wp), dtype=torch.bool, device=self.device)
                padded[:, : gm.shape[1], : gm.shape[2]] = gm
                t["masks"] = padded
            targets.append(t)
        return targets

    def losses(self, batched_inputs, images, outputs, state):
        targets = self.prepare_targets(batched_inputs, images)
        mask_predictor = None
        if self.mask_head is not None:
            if any("masks" not in t for t in targets):
                raise ValueError("the mask head needs 'gt_masks' in every training instance")
            if self.train_matched_only:
                mask_predictor = lambda b, q: self.predict_masks(state, b, q)  # noqa: E731
            else:
                bsz, n = outputs["pred_logits"].shape[:2]
                b = torch.arange(bsz, device=self.device).repeat_interleave(n)
                q = torch.arange(n, device=self.device).repeat(bsz)
                outputs["pred_masks"] = self.predict_masks(state, b, q).view(bsz, n, *state["features"]["res2"].shape[-2:])
        losses, metrics, _ = self.criterion(outputs, targets, mask_predictor)
        try:
            get_event_storage().put_scalars(**{k: float(v) for k, v in metrics.items()})
        except AssertionError:  # outside an EventStorage: metrics are not recorded
            pass
        return losses

    # ---- inference ----------------------------------------------------------------------------------
    def _queries_needing_masks(self, keep, inst_sel):
        need = torch.zeros_like(keep)
        if self.mask_head is None:
            return need
        if not self.masks_for_kept_only:
            return torch.ones_like(keep)
        if self.panoptic_on:
            need |= keep
        if self.instance_on:
            need |= inst_sel
        return need

    def _resolve_is_thing(self):
        if self._is_thing_known:
            return
        is_thing = is_thing_from_metadata(self.metadata_names, self.num_classes)
        if is_thing is None:
            logger.warning(
                f"No thing/stuff metadata for data sets {self.metadata_names}: every class is treated as a thing "
                "(no stuff merging). Register the data set before inference or set DATASETS.TEST."
            )
        else:
            self.is_thing.copy_(is_thing.to(self.is_thing.device))
        self._is_thing_known = True

    def inference(self, batched_inputs, images, outputs, state):
        self._resolve_is_thing()
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bsz, n = logits.shape[:2]
        probs = logits.softmax(-1)
        per_image = []
        for b in range(bsz):
            keep, scores, labels = select_queries(logits[b], self.object_mask_threshold)
            inst_scores, inst_labels = probs[b, :, :-1].max(-1)
            # With a mask head, instances are the thing predictions; without, every query (boxes only).
            inst_sel = self.is_thing[inst_labels] if self.mask_head is not None else torch.ones_like(keep)
            per_image.append((keep, scores, labels, inst_sel, inst_scores, inst_labels))

        # Mask logits only for the queries that can reach an output, all images in one call.
        need = torch.stack([self._queries_needing_masks(p[0], p[3]) for p in per_image])  # (B, N)
        b_idx, q_idx = need.nonzero(as_tuple=True)
        row_of = torch.full((bsz, n), -1, dtype=torch.long, device=self.device)
        row_of[b_idx, q_idx] = torch.arange(len(b_idx), device=self.device)
        mask_logits = self.predict_masks(state, b_idx, q_idx) if len(b_idx) else None

        results = []
        for b, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            keep, scores, labels, inst_sel, inst_scores, inst_labels = per_image[b]
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            masks_of = None  # selection (N,) bool → mask logits at the image size of those queries
            if self.mask_head is not None:
                up = upsample_masks(
                    mask_logits[row_of[b, need[b]]] if need[b].any() else logits.new_zeros((0, 1, 1)),
                    images.tensor.shape[-2:], image_size,
                )
                local = torch.cumsum(need[b].long(), 0) - 1  # row in `up` of each needed query
                masks_of = lambda sel: up[local[sel]]  # noqa: E731
            res = {}
            if self.panoptic_on:
                args = (masks_of(keep), labels[keep], scores[keep], self.is_thing, out_size, self.min_segment_area)
                if self.panoptic_merge_mode == "maskformer":
                    res["panoptic_seg"] = maskformer_merge(*args, self.overlap_threshold)
                else:
                    res["panoptic_seg"] = panoptic_merge(*args, self.stuff_merge)
            if self.instance_on:
                res["instances"] = self._instances(
                    boxes[b][inst_sel], inst_scores[inst_sel], inst_labels[inst_sel],
                    None if masks_of is None else masks_of(inst_sel), image_size, out_size,
                )
            results.append(res)
        return results

    def _instances(self, boxes, scores, classes, mask_logits, image_size, out_size):
        """Boxes (normalized cxcywh) and optional mask logits at the image size → Instances at out_size."""
        h, w = image_size
        inst = Instances(image_size)
        inst.pred_boxes = Boxes(cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h]))
        inst.scores = scores
        inst.pred_classes = classes
        if mask_logits is not None:  # carried through detector_postprocess, which drops empty boxes
            inst.pred_mask_logits = mask_logits
        inst = detector_postprocess(inst, *out_size)
        if mask_logits is not None:
            mask_logits = inst.pred_mask_logits
            inst.remove("pred_mask_logits")
            # DETR: sigmoid > 0.5 at the image size, then nearest resize to the output size
            m = (mask_logits > 0)[:, None].float()
            inst.pred_masks = F.interpolate(m, size=out_size, mode="nearest")[:, 0] > 0.5 if len(m) else (
                torch.zeros((0, *out_size), dtype=torch.bool, device=m.device))
        return inst
