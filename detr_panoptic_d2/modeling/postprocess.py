"""Post-processing of DETR's per-query outputs into Detectron2 results: the panoptic merges (DETR's,
the default, and MaskFormer's score-weighted merge; one implementation for torch and numpy, in
``detr_panoptic_runtime.postprocess``, shared with the exported models' runtime) and instances."""

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from detr_panoptic_runtime.postprocess import (  # noqa: F401  (one implementation, torch and numpy)
    mask_rows,
    maskformer_merge,
    merge_kept_masks,
    panoptic_merge,
    select_queries,
    upsample_masks,
)

from .box_ops import cxcywh_to_xyxy
from .checks import check_arg

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


@dataclass
class QuerySelection:
    """One image's queries, chosen once from its class logits (N, K+1), and the mask rows it owns.

    keep, scores, labels: (N,) the panoptic selection (:func:`select_queries`: argmax not
    no-object, score above the threshold) and every query's score and label over K+1.
    instance, instance_scores, instance_labels: (N,) the instances' selection (best real class a
    thing) and every query's best real score and label.
    needs_mask: (N,) bool, the queries whose masks the outputs read.
    mask_queries: (M,) int64 ascending, the queries of the rows of ``mask_logits`` (M, H/4, W/4);
    both None until the model computed them (and without a mask head).
    """

    keep: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    instance: torch.Tensor
    instance_scores: torch.Tensor
    instance_labels: torch.Tensor
    needs_mask: torch.Tensor
    mask_queries: torch.Tensor = None
    mask_logits: torch.Tensor = None

    def attach_masks(self, mask_queries, mask_logits):
        """Give the selection its mask rows: logits (M, H/4, W/4) of the queries (M,)."""
        self.mask_queries, self.mask_logits = mask_queries, mask_logits
        return self

    def rows(self, selected, what):
        """The rows of ``mask_logits`` of the queries of ``selected`` ((N,) bool), in query order;
        a query without a row is a ``ValueError`` (:func:`mask_rows`)."""
        return mask_rows(self.mask_queries, selected.nonzero()[:, 0], selected.shape[0], what)


class PanopticPostProcessor(nn.Module):
    """DETR's per-query outputs of one image → Detectron2 results: "panoptic_seg", "instances",
    "sem_seg".

    Queries are kept for the panoptic output when their argmax is not no-object and their score is
    above ``object_mask_threshold``. Instances are the queries whose best real class is a thing
    (with masks when there is a mask head); when every class is a thing (no thing/stuff split
    known), every query, as DETR. ``sem_seg`` (``semantic_on``, mask head needed) is MaskFormer's
    semantic inference over all queries.

    :meth:`select` chooses an image's queries once (:class:`QuerySelection`), including which
    queries' masks the outputs read (only the kept and instance queries when
    ``masks_for_kept_only`` and no semantic output); the model computes those masks into the
    selection, and ``__call__`` reads each output's rows from it.
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
        name, key = "PanopticPostProcessor", "MODEL.DETR.TEST."
        for arg, value in (
            ("object_mask_threshold", object_mask_threshold),
            ("overlap_threshold", overlap_threshold),
        ):
            ok = 0.0 <= value <= 1.0
            check_arg(ok, name, arg, key + arg.upper(), value, "in [0, 1]")
        check_arg(
            min_segment_area >= 0,
            name,
            "min_segment_area",
            key + "MIN_SEGMENT_AREA",
            min_segment_area,
            ">= 0",
        )
        check_arg(
            merge in ("detr", "maskformer"),
            name,
            "merge",
            key + "PANOPTIC_MERGE",
            merge,
            "'detr' or 'maskformer'",
        )
        check_arg(
            stuff_merge in ("first", "union"),
            name,
            "stuff_merge",
            key + "STUFF_MERGE",
            stuff_merge,
            "'first' or 'union'",
        )
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

    def select(self, logits):
        """logits (N, K+1) of one image → its :class:`QuerySelection` (masks not yet computed)."""
        keep, scores, labels = select_queries(logits, self.object_mask_threshold)
        inst_scores, inst_labels = logits.softmax(-1)[:, :-1].max(-1)
        instance = self.is_thing[inst_labels]
        if not self.has_masks:
            needs_mask = torch.zeros_like(keep)
        elif self.semantic_on or not self.masks_for_kept_only:
            needs_mask = torch.ones_like(keep)
        else:
            needs_mask = torch.zeros_like(keep)
            if self.panoptic_on:
                needs_mask = needs_mask | keep
            if self.instance_on:
                needs_mask = needs_mask | instance
        return QuerySelection(keep, scores, labels, instance, inst_scores, inst_labels, needs_mask)

    def forward(self, selection, logits, boxes, padded_size, image_size, out_size):
        """One image's results from its :class:`QuerySelection` (its mask rows computed when
        there is a mask head), logits (N, K+1) and boxes (N, 4); padded_size: the batch's padded
        (H_pad, W_pad); image_size: this image's (H, W) in it; out_size: the requested output
        size. Returns a dict with "panoptic_seg", "instances" and "sem_seg" as configured."""
        s = selection
        masks, whole = s.mask_logits, None
        if masks is not None and (
            self.instance_on or (self.panoptic_on and self.merge == "maskformer")
        ):  # an output reads them whole: upsampled once
            whole = upsample_masks(masks, padded_size, image_size)  # (M, H, W)
        res = {}
        if self.panoptic_on:
            res["panoptic_seg"] = merge_kept_masks(
                masks,
                s.rows(s.keep, "kept"),
                s.labels[s.keep],
                s.scores[s.keep],
                self.is_thing,
                padded_size,
                image_size,
                out_size,
                self.merge,
                self.min_segment_area,
                self.stuff_merge,
                self.overlap_threshold,
                upsampled=whole,
            )
        if self.instance_on:
            sel = s.instance
            res["instances"] = detr_instances(
                boxes[sel],
                s.instance_scores[sel],
                s.instance_labels[sel],
                whole,
                image_size,
                out_size,
                mask_rows=None if whole is None else s.rows(sel, "instance"),
            )  # the rows of ``whole``, not a copy of them
        if self.semantic_on:
            if s.mask_queries.shape[0] != logits.shape[0]:
                raise ValueError("semantic inference reads every query's mask")
            res["sem_seg"] = semantic_inference(logits, masks, padded_size, image_size, out_size)
        return res
