"""Panoptic post-processing in Detectron2's ``panoptic_seg`` format, vectorized on tensors: DETR's merge
(the default) and MaskFormer's score-weighted merge."""
import itertools

import torch
import torch.nn.functional as F


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
    masks = F.interpolate(mask_logits[:, None], size=tuple(padded_size), mode="bilinear", align_corners=False)
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


def panoptic_merge(mask_logits, classes, scores, is_thing, output_size, min_area=4, stuff_merge="first"):
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
        raise ValueError(f"MODEL.DETR.TEST.STUFF_MERGE must be 'first' or 'union', got {stuff_merge!r}")
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
    raw = mask_logits.max(0).indices if q else torch.full(mask_logits.shape[1:], -1, dtype=torch.long, device=device)
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
    new_id[seg_queries] = torch.arange(1, len(seg_queries) + 1, dtype=torch.int32, device=ids.device)
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


def maskformer_merge(mask_logits, classes, scores, is_thing, output_size, min_area=4, overlap_threshold=0.8):
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
        return _number_segments(void, torch.zeros(0, dtype=torch.bool, device=device), classes, scores, is_thing)
    h, w = mask_logits.shape[1:]
    # (H*W,) the query with the highest score x probability; max(0) is ~2x faster than argmax(0) on CPU
    winner = mask_logits.sigmoid().mul_(scores[:, None, None]).max(0).indices.flatten()
    own = (mask_logits >= 0).flatten(1)  # (Q, H*W): probability >= 0.5
    won_area = torch.bincount(winner, minlength=q)
    own_area = own.view(torch.uint8).sum(1, dtype=torch.int32)  # not via int64: half the memory traffic
    in_segment = own.gather(0, winner[None])[0]  # the winner's own probability is >= 0.5
    seg_area = torch.bincount(winner[in_segment], minlength=q)
    # won / own >= threshold, in double precision as MaskFormer's Python division
    ok = (own_area > 0) & (seg_area > 0) & (won_area.double() / own_area.clamp(min=1).double() >= overlap_threshold)
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
