"""Post-processing of DETR's per-query outputs into Detectron2 results: the panoptic merges (DETR's,
the default, and MaskFormer's score-weighted merge; one implementation for torch and numpy, in
``detr_panoptic_runtime.postprocess``, shared with the exported models' runtime) and instances."""

import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from detr_panoptic_runtime.postprocess import (  # noqa: F401  (one implementation, torch and numpy)
    _number_segments,
    _pil_nearest_index,
    _resize_ids,
    maskformer_merge,
    panoptic_merge,
    select_queries,
    upsample_masks,
)

from .box_ops import cxcywh_to_xyxy

logger = logging.getLogger(__name__)


def thing_classes_from_metadata(dataset_names, num_classes):
    """(K,) bool: which contiguous classes are things, from the first data set in ``dataset_names``
    whose metadata has ``thing_dataset_id_to_contiguous_id``; all True (with a warning) when none
    has it."""
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            continue
        things = set(meta.thing_dataset_id_to_contiguous_id.values())
        all_ids = things | set(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}).values())
        if all_ids and max(all_ids) >= num_classes:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES={num_classes} but data set {name!r} has contiguous class "
                f"ids up to {max(all_ids)}: set MODEL.DETR.NUM_CLASSES to at least "
                f"{max(all_ids) + 1}"
            )
        is_thing = torch.zeros(num_classes, dtype=torch.bool)
        is_thing[list(things)] = True
        return is_thing
    logger.warning(
        f"No thing/stuff metadata for data sets {tuple(dataset_names)}: every class is treated as "
        "a thing. Register the data set before building the model, or set DATASETS.TEST."
    )
    return torch.ones(num_classes, dtype=torch.bool)


def _nearest_index(n_in, n_out, device):
    """(n_out,) source index of each output row of ``F.interpolate(mode="nearest")`` from n_in
    rows: interpolate's own choice, read off an index ramp (exact in float32 below 2**24)."""
    ramp = torch.arange(n_in, dtype=torch.float32, device=device)[None, None, :, None]
    return F.interpolate(ramp, size=(n_out, 1), mode="nearest")[0, 0, :, 0].long()


def resize_masks_nearest(masks, out_size, index=None, chunk_pixels=2**26):
    """(Q, h, w) bool masks, or mask logits (then binarized: > 0) → (K, H, W) bool masks of the
    rows ``index`` (K,) (default: all), equal to ``F.interpolate(masks[index][:, None].float(),
    out_size, mode="nearest")[:, 0] > 0.5``, without that float copy (nor a copy of the selected
    rows): a gather of interpolate's source rows and columns into a preallocated bool tensor, a few
    masks (about ``chunk_pixels`` output pixels) at a time."""
    h_out, w_out = out_size
    n = masks.shape[0] if index is None else index.numel()
    out = torch.empty((n, h_out, w_out), dtype=torch.bool, device=masks.device)
    if out.numel() == 0:
        return out
    rows = _nearest_index(masks.shape[1], h_out, masks.device)[:, None]
    cols = _nearest_index(masks.shape[2], w_out, masks.device)
    chunk = max(1, chunk_pixels // (h_out * w_out))
    for i in range(0, n, chunk):
        part = masks[i : i + chunk] if index is None else masks[index[i : i + chunk]]
        if part.dtype != torch.bool:
            part = part > 0
        out[i : i + chunk] = part[:, rows, cols]
    return out


def detr_instances(boxes, scores, classes, mask_logits, image_size, out_size, mask_rows=None):
    """Boxes (Q, 4) normalized cxcywh and optional mask logits (Q, H_img, W_img) at the processed
    image size → Detectron2 ``Instances`` at ``out_size`` (boxes rescaled and clipped, empty boxes
    dropped, masks binarized at the image size and nearest-resized, as DETR). ``mask_rows`` (Q,):
    the row of each box's mask in ``mask_logits`` (default: row i for box i), so that a caller
    need not copy them out of a larger tensor. Memory beyond the (Q, H_out, W_out) bool masks stays
    at a few masks' worth (:func:`resize_masks_nearest`)."""
    h, w = image_size
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h]))
    inst.scores = scores
    inst.pred_classes = classes
    if mask_logits is not None:  # the rows detector_postprocess keeps (it drops empty boxes)
        if mask_rows is None:
            mask_rows = torch.arange(len(boxes), device=boxes.device)
        inst.mask_rows = mask_rows
    inst = detector_postprocess(inst, *out_size)
    if mask_logits is not None:
        inst.pred_masks = resize_masks_nearest(mask_logits, out_size, index=inst.mask_rows)
        inst.remove("mask_rows")
    return inst


def semantic_inference(logits, mask_logits, padded_size, image_size, out_size, chunk=16):
    """MaskFormer's semantic inference: (K, H_out, W_out) = sum over queries of the class
    probabilities (no-object dropped) times the mask probabilities, the masks bilinearly upsampled
    to the padded canvas, cropped to the image and resized to the output size before the sigmoid.
    logits: (N, K+1), mask_logits: (N, H_pad/4, W_pad/4) of every query. Queries are taken ``chunk``
    at a time, so memory stays at the output map plus ``chunk`` upsampled masks."""
    probs = logits.softmax(-1)[:, :-1].float()  # (N, K)
    sem = probs.new_zeros((probs.shape[1], *out_size))
    for i in range(0, mask_logits.shape[0], chunk):
        masks = upsample_masks(mask_logits[i : i + chunk], padded_size, image_size)
        if tuple(masks.shape[-2:]) != tuple(out_size):
            masks = F.interpolate(
                masks[:, None], size=tuple(out_size), mode="bilinear", align_corners=False
            )[:, 0]
        sem += torch.einsum("qk,qhw->khw", probs[i : i + chunk], masks.float().sigmoid())
    return sem


class PanopticPostProcessor(nn.Module):
    """DETR's per-query outputs of one image → Detectron2 results: "panoptic_seg", "instances",
    "sem_seg".

    Queries are kept for the panoptic output when their argmax is not no-object and their score is
    above ``object_mask_threshold``. Instances are the queries whose best real class is a thing
    (with masks when there is a mask head); when every class is a thing (no thing/stuff split
    known), every query, as DETR. ``sem_seg`` (``semantic_on``, mask head needed) is MaskFormer's
    semantic inference over all queries. ``queries_needing_masks`` tells which queries' masks the
    outputs read (only the kept and instance queries when ``masks_for_kept_only`` and no semantic
    output), and ``__call__`` takes the mask logits of exactly those, in query order.
    """

    @configurable
    def __init__(
        self,
        *,
        is_thing,
        has_masks,
        object_mask_threshold=0.85,
        min_segment_area=4,
        merge="detr",
        stuff_merge="first",
        overlap_threshold=0.8,
        panoptic_on=True,
        instance_on=True,
        semantic_on=False,
        masks_for_kept_only=True,
    ):
        super().__init__()
        self.register_buffer(
            "is_thing", is_thing, persistent=False
        )  # (K,) bool, from the data set metadata
        self.has_masks = has_masks
        self.object_mask_threshold = object_mask_threshold
        self.min_segment_area = min_segment_area
        self.merge = merge
        self.stuff_merge = stuff_merge
        self.overlap_threshold = overlap_threshold
        self.panoptic_on = panoptic_on and has_masks
        self.instance_on = instance_on
        self.semantic_on = semantic_on and has_masks
        self.masks_for_kept_only = masks_for_kept_only

    @classmethod
    def from_config(cls, cfg, is_thing, has_masks):
        """Keyword arguments from ``cfg.MODEL.DETR.TEST``; ``is_thing`` (K,) bool from the data
        set metadata, ``has_masks`` whether the model has a mask head."""
        t = cfg.MODEL.DETR.TEST
        return {
            "is_thing": is_thing,
            "has_masks": has_masks,
            "object_mask_threshold": t.OBJECT_MASK_THRESHOLD,
            "min_segment_area": t.MIN_SEGMENT_AREA,
            "merge": t.PANOPTIC_MERGE,
            "stuff_merge": t.STUFF_MERGE,
            "overlap_threshold": t.OVERLAP_THRESHOLD,
            "panoptic_on": t.PANOPTIC_ON,
            "instance_on": t.INSTANCE_ON,
            "semantic_on": t.SEMANTIC_ON,
            "masks_for_kept_only": t.MASKS_FOR_KEPT_ONLY,
        }

    def _selections(self, logits):
        """(panoptic keep, instance selection) (N,) bool each, with scores and labels of both."""
        keep, scores, labels = select_queries(logits, self.object_mask_threshold)
        inst_scores, inst_labels = logits.softmax(-1)[:, :-1].max(-1)
        inst_sel = self.is_thing[inst_labels]
        return keep, scores, labels, inst_sel, inst_scores, inst_labels

    def queries_needing_masks(self, logits):
        """(N,) bool: the queries whose mask logits ``__call__`` reads. logits: (N, K+1)."""
        if not self.has_masks:
            return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        if self.semantic_on or not self.masks_for_kept_only:
            return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        keep, _, _, inst_sel, _, _ = self._selections(logits)
        need = torch.zeros_like(keep)
        if self.panoptic_on:
            need = need | keep
        if self.instance_on:
            need = need | inst_sel
        return need

    def forward(self, logits, boxes, mask_logits, padded_size, image_size, out_size):
        """logits (N, K+1), boxes (N, 4) of one image; mask_logits (Q, H_pad/4, W_pad/4) of the
        queries ``queries_needing_masks(logits)`` selects, in query order (None without a mask
        head); padded_size: the batch's padded (H_pad, W_pad); image_size: this image's (H, W) in
        it; out_size: the requested output size. Returns a dict with "panoptic_seg", "instances" and
        "sem_seg" as configured."""
        keep, scores, labels, inst_sel, inst_scores, inst_labels = self._selections(logits)
        need, whole = None, None
        if mask_logits is not None:
            need = self.queries_needing_masks(logits)
            if self.instance_on or (self.panoptic_on and self.merge == "maskformer"):
                # an output reads them whole: upsampled once
                whole = upsample_masks(mask_logits, padded_size, image_size)  # (Q, H, W)

        def rows(sel, masks):  # the mask rows of the queries in sel (sel ⊆ need), in query order
            return masks[sel[need]]

        res = {}
        if self.panoptic_on:
            args = (labels[keep], scores[keep], self.is_thing, out_size, self.min_segment_area)
            if self.merge == "maskformer":
                res["panoptic_seg"] = maskformer_merge(
                    rows(keep, whole), *args, self.overlap_threshold
                )
            elif whole is not None:
                res["panoptic_seg"] = panoptic_merge(rows(keep, whole), *args, self.stuff_merge)
            else:  # from the stride-4 logits: the argmax in row slabs, never (Q, H, W) at once
                res["panoptic_seg"] = panoptic_merge(
                    rows(keep, mask_logits),
                    *args,
                    self.stuff_merge,
                    upsample=(padded_size, image_size),
                )
        if self.instance_on:
            res["instances"] = detr_instances(
                boxes[inst_sel],
                inst_scores[inst_sel],
                inst_labels[inst_sel],
                whole,
                image_size,
                out_size,
                mask_rows=None if whole is None else inst_sel[need].nonzero()[:, 0],
            )  # the rows of ``whole``, not a copy of them
        if self.semantic_on:
            res["sem_seg"] = semantic_inference(
                logits, mask_logits, padded_size, image_size, out_size
            )
        return res
