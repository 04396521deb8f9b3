"""Post-processing of DETR's per-query outputs into Detectron2 results: the panoptic merges, vectorized on
tensors (DETR's, the default, and MaskFormer's score-weighted merge) and thing instances."""

import itertools

import torch
import torch.nn.functional as F
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances
from torch import nn

from .box_ops import cxcywh_to_xyxy


def select_queries(logits, threshold):
    """Queries whose argmax over classes + no-object is not no-object and whose score > threshold.

    logits: (N, K+1). Returns (keep (N,) bool, scores (N,), labels (N,)).
    """
    scores, labels = logits.softmax(-1).max(-1)
    keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)
    return keep, scores, labels


def upsample_masks(mask_logits, padded_size, image_size):
    """(Q, h, w) logits at stride 4 of the padded canvas → (Q, H_img, W_img): bilinear to the padded size,
    then the image is cropped out of the canvas."""
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *image_size))
    masks = F.interpolate(
        mask_logits[:, None], size=tuple(padded_size), mode="bilinear", align_corners=False
    )
    return masks[:, 0, : image_size[0], : image_size[1]]


def _pil_nearest_index(n_in, n_out, device):
    """Source index of each output pixel exactly as PIL's NEAREST resize picks it (ImagingScaleAffine): the
    sampling position starts at scale / 2 and accumulates scale in double precision, then is truncated.
    (torch's "nearest-exact" rounds differently where a position falls on an integer.)"""
    scale = n_in / n_out
    pos = itertools.accumulate([scale] * (n_out - 1), initial=scale * 0.5)
    return torch.tensor([min(int(p), n_in - 1) for p in pos], dtype=torch.long, device=device)


def _resize_ids(ids, output_size):
    """Nearest resize of an id map, sampling pixel centers as PIL's NEAREST (DETR resizes its id PNG)."""
    if tuple(ids.shape) == tuple(output_size):
        return ids
    rows = _pil_nearest_index(ids.shape[0], output_size[0], ids.device)
    cols = _pil_nearest_index(ids.shape[1], output_size[1], ids.device)
    return ids[rows[:, None], cols[None, :]]


def panoptic_merge(
    mask_logits, classes, scores, is_thing, output_size, min_area=4, stuff_merge="first"
):
    """Merge per-query masks into one panoptic segmentation, as DETR's post-processing behaves.

    mask_logits: (Q, H, W) at the processed image size, for the kept queries in query order; classes,
    scores: (Q,); is_thing: (K,) bool per contiguous class; output_size: (H_out, W_out).

    Each pixel goes to the query with the highest mask logit. With ``stuff_merge="first"`` (DETR), pixels
    of every stuff query are first relabeled to the lowest-index query of the same class; the duplicates
    then have zero area and fall to the small-segment filter, after which the argmax is recomputed without
    them (and without relabeling), repeatedly until no segment has area <= min_area at the output size.
    ``"union"`` keeps same-class stuff merged into one segment throughout.
    Segment ids are 1..n in query order; 0 is void. Returns (int32 (H_out, W_out), segments_info).
    """
    if stuff_merge not in ("first", "union"):
        raise ValueError(
            f"MODEL.DETR.TEST.STUFF_MERGE must be 'first' or 'union', got {stuff_merge!r}"
        )
    q = mask_logits.shape[0]
    device = mask_logits.device
    # rep[i]: the query whose segment query i's pixels join (itself, or the first stuff query of its class).
    rep = torch.arange(q, device=device)
    stuff = ~is_thing.to(device)[classes]
    if q:
        same = (classes[:, None] == classes[None, :]) & stuff[:, None] & stuff[None, :]
        rep = torch.where(stuff, same.int().argmax(1), rep)
    alive = torch.ones(q, dtype=torch.bool, device=device)
    # raw: per pixel, the alive query with the highest logit (first one on ties); -1 where none is alive.
    raw = (
        mask_logits.max(0).indices
        if q
        else torch.full(mask_logits.shape[1:], -1, dtype=torch.long, device=device)
    )
    relabel = True
    while True:
        relabeled = relabel and q > 0
        ids = torch.where(raw >= 0, rep[raw.clamp(min=0)], raw) if relabeled else raw
        ids = _resize_ids(ids, output_size)
        area = torch.bincount(ids.flatten() + 1, minlength=q + 1)[1:]
        if stuff_merge == "union":
            small = alive & (rep == torch.arange(q, device=device)) & (area <= min_area)
            small = small[rep]  # a removed group takes its members along
        else:
            small = alive & (area <= min_area)
            relabel = False  # DETR relabels same-class stuff in the first pass only
        if not small.any():
            break
        alive &= ~small
        # Only pixels whose query was removed change owner: recompute the argmax there, over the alive queries.
        dead = (raw >= 0) & ~alive[raw.clamp(min=0)]
        if not alive.any():
            raw = torch.full_like(raw, -1)
        elif dead.any():
            sub = mask_logits[:, dead]  # (Q, P)
            sub[~alive] = float("-inf")
            raw[dead] = sub.max(0).indices
    # Final ids: 1..n over the segments that own pixels, in query order.
    owners = alive & (rep == torch.arange(q, device=device)) if relabeled else alive
    return _number_segments(ids, owners, classes, scores, is_thing)


def _number_segments(ids, owners, classes, scores, is_thing):
    """ids: (H, W) long, the owning query per pixel (-1 = void); owners: (Q,) bool, the queries that own a
    segment. Returns (int32 map with ids 1..n in query order, 0 = void; segments_info)."""
    q = owners.shape[0]
    new_id = torch.zeros(q + 1, dtype=torch.int32, device=ids.device)
    seg_queries = owners.nonzero()[:, 0]
    new_id[seg_queries] = torch.arange(
        1, len(seg_queries) + 1, dtype=torch.int32, device=ids.device
    )
    panoptic = new_id[ids]  # -1 → index q → 0 (void)
    area = torch.bincount(panoptic.flatten().long(), minlength=len(seg_queries) + 1).tolist()
    is_thing_cpu, classes_l, scores_l = is_thing.tolist(), classes.tolist(), scores.tolist()
    segments_info = [
        {
            "id": i + 1,
            "isthing": bool(is_thing_cpu[classes_l[qi]]),
            "category_id": int(classes_l[qi]),
            "score": float(scores_l[qi]),
            "area": int(area[i + 1]),
        }
        for i, qi in enumerate(seg_queries.tolist())
    ]
    return panoptic, segments_info


def maskformer_merge(
    mask_logits, classes, scores, is_thing, output_size, min_area=4, overlap_threshold=0.8
):
    """Merge per-query masks as MaskFormer's panoptic inference does (``PANOPTIC_MERGE: "maskformer"``).

    Arguments as :func:`panoptic_merge`. Each pixel goes to the query with the highest score x mask
    probability; a query's segment is the pixels it wins where its own mask probability is >= 0.5. A query
    that wins fewer than ``overlap_threshold`` times the pixels of its own mask (probability >= 0.5) is
    dropped, so a duplicate that loses most of its mask to a more confident query does not split the object.
    Stuff queries of one class form one segment, under the id of the first. Segments with area <= min_area at
    the output size are removed; the pixels of removed queries are void (0).
    """
    q = mask_logits.shape[0]
    device = mask_logits.device
    if q == 0:
        void = torch.full(tuple(output_size), -1, dtype=torch.long, device=device)
        return _number_segments(
            void, torch.zeros(0, dtype=torch.bool, device=device), classes, scores, is_thing
        )
    h, w = mask_logits.shape[1:]
    # (H*W,) the query with the highest score x probability; max(0) is ~2x faster than argmax(0) on CPU
    winner = mask_logits.sigmoid().mul_(scores[:, None, None]).max(0).indices.flatten()
    own = (mask_logits >= 0).flatten(1)  # (Q, H*W): probability >= 0.5
    won_area = torch.bincount(winner, minlength=q)
    own_area = own.view(torch.uint8).sum(
        1, dtype=torch.int32
    )  # not via int64: half the memory traffic
    in_segment = own.gather(0, winner[None])[0]  # the winner's own probability is >= 0.5
    seg_area = torch.bincount(winner[in_segment], minlength=q)
    # won / own >= threshold, in double precision as MaskFormer's Python division
    ok = (
        (own_area > 0)
        & (seg_area > 0)
        & (won_area.double() / own_area.clamp(min=1).double() >= overlap_threshold)
    )
    # Same-class stuff joins the first surviving query of its class.
    stuff = ~is_thing.to(device)[classes]
    same = (classes[:, None] == classes[None, :]) & stuff[:, None] & stuff[None, :] & ok[None, :]
    rep = torch.where(stuff & ok, same.int().argmax(1), torch.arange(q, device=device))
    ids = torch.where(in_segment & ok[winner], rep[winner], -1).view(h, w)
    ids = _resize_ids(ids, output_size)
    area = torch.bincount(ids.flatten() + 1, minlength=q + 1)[1:]
    owners = ok & (rep == torch.arange(q, device=device)) & (area > min_area)
    ids = torch.where((ids >= 0) & owners[ids.clamp(min=0)], ids, -1)
    return _number_segments(ids, owners, classes, scores, is_thing)


def detr_instances(boxes, scores, classes, mask_logits, image_size, out_size):
    """Boxes (Q, 4) normalized cxcywh and optional mask logits (Q, H_img, W_img) at the processed image size →
    Detectron2 ``Instances`` at ``out_size`` (boxes rescaled and clipped, empty boxes dropped, masks binarized
    at the image size and nearest-resized, as DETR)."""
    h, w = image_size
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h]))
    inst.scores = scores
    inst.pred_classes = classes
    if mask_logits is not None:  # carried through detector_postprocess, which drops empty boxes
        inst.pred_mask_logits = mask_logits
    inst = detector_postprocess(inst, *out_size)
    if mask_logits is not None:
        m = (inst.pred_mask_logits > 0)[:, None].float()
        inst.remove("pred_mask_logits")
        if len(m):
            inst.pred_masks = F.interpolate(m, size=out_size, mode="nearest")[:, 0] > 0.5
        else:
            inst.pred_masks = torch.zeros((0, *out_size), dtype=torch.bool, device=m.device)
    return inst


def semantic_inference(logits, mask_logits, padded_size, image_size, out_size, chunk=16):
    """MaskFormer's semantic inference: (K, H_out, W_out) = sum over queries of the class probabilities
    (no-object dropped) times the mask probabilities, the masks bilinearly upsampled to the padded canvas,
    cropped to the image and resized to the output size before the sigmoid. logits: (N, K+1), mask_logits:
    (N, H_pad/4, W_pad/4) of every query. Queries are taken ``chunk`` at a time, so memory stays at the
    output map plus ``chunk`` upsampled masks."""
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
    """DETR's per-query outputs of one image → Detectron2 results: "panoptic_seg", "instances", "sem_seg".

    Queries are kept for the panoptic output when their argmax is not no-object and their score is above
    ``object_mask_threshold``. Instances are the queries whose best real class is a thing (with masks when
    there is a mask head); when every class is a thing (no thing/stuff split known), every query, as DETR.
    ``sem_seg`` (``semantic_on``, mask head needed) is MaskFormer's semantic inference over all queries.
    ``queries_needing_masks`` tells which queries' masks the outputs read (only the kept and instance queries
    when ``masks_for_kept_only`` and no semantic output), and ``__call__`` takes the mask logits of exactly
    those, in query order.
    """

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
        t = cfg.MODEL.DETR.TEST
        return cls(
            is_thing=is_thing,
            has_masks=has_masks,
            object_mask_threshold=t.OBJECT_MASK_THRESHOLD,
            min_segment_area=t.MIN_SEGMENT_AREA,
            merge=t.PANOPTIC_MERGE,
            stuff_merge=t.STUFF_MERGE,
            overlap_threshold=t.OVERLAP_THRESHOLD,
            panoptic_on=t.PANOPTIC_ON,
            instance_on=t.INSTANCE_ON,
            semantic_on=t.SEMANTIC_ON,
            masks_for_kept_only=t.MASKS_FOR_KEPT_ONLY,
        )

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
        return (keep & self.panoptic_on) | (inst_sel & self.instance_on)

    def forward(self, logits, boxes, mask_logits, padded_size, image_size, out_size):
        """logits (N, K+1), boxes (N, 4) of one image; mask_logits (Q, H_pad/4, W_pad/4) of the queries
        ``queries_needing_masks(logits)`` selects, in query order (None without a mask head); padded_size: the
        batch's padded (H_pad, W_pad); image_size: this image's (H, W) in it; out_size: the requested output
        size. Returns a dict with "panoptic_seg", "instances" and "sem_seg" as configured."""
        keep, scores, labels, inst_sel, inst_scores, inst_labels = self._selections(logits)
        masks = None
        if mask_logits is not None:
            need = self.queries_needing_masks(logits)
            masks = upsample_masks(mask_logits, padded_size, image_size)  # (Q, H, W)

        def rows(sel):  # the mask rows of the queries in sel (sel ⊆ need), in query order
            return masks[sel[need]]

        res = {}
        if self.panoptic_on:
            args = (
                rows(keep),
                labels[keep],
                scores[keep],
                self.is_thing,
                out_size,
                self.min_segment_area,
            )
            if self.merge == "maskformer":
                res["panoptic_seg"] = maskformer_merge(*args, self.overlap_threshold)
            else:
                res["panoptic_seg"] = panoptic_merge(*args, self.stuff_merge)
        if self.instance_on:
            res["instances"] = detr_instances(
                boxes[inst_sel],
                inst_scores[inst_sel],
                inst_labels[inst_sel],
                None if masks is None else rows(inst_sel),
                image_size,
                out_size,
            )
        if self.semantic_on:
            res["sem_seg"] = semantic_inference(
                logits, mask_logits, padded_size, image_size, out_size
            )
        return res
