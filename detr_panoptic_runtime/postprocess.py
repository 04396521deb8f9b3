"""DETR's per-query outputs of one image → a panoptic segmentation: query selection, mask
upsampling, the two merges (DETR's and MaskFormer's), numbering. ONE implementation, used by the
eager Detectron2 model (``detr_panoptic_d2.modeling.postprocess`` imports it) and by the exported
models' runtime.

Every function takes torch tensors (any device; the eager model's fast path) or numpy arrays (ONNX
Runtime, no torch needed) and returns the same kind; see :mod:`detr_panoptic_runtime.array_ops` for
the few operations that differ between the two.
"""

import itertools

from .array_ops import ops_for

__all__ = [
    "select_queries",
    "mask_rows",
    "upsample_masks",
    "panoptic_merge",
    "maskformer_merge",
    "merge_kept_masks",
    "panoptic_inference",
]


def select_queries(logits, threshold):
    """Queries whose argmax over classes + no-object is not no-object and whose score > threshold.

    logits: (N, K+1). Returns (keep (N,) bool, scores (N,), labels (N,)).
    """
    xp = ops_for(logits)
    scores, labels = xp.max_last(xp.softmax(logits))
    keep = (labels != logits.shape[-1] - 1) & (scores > threshold)
    return keep, scores, labels


def mask_rows(mask_query_index, queries, num_queries, what="selected"):
    """The rows of ``queries`` (K,) int64 among mask rows computed for the queries
    ``mask_query_index`` (M,) (the query of each row), as (K,) int64. A query without a row is a
    ``ValueError`` naming it (``what``: which selection asked), never a wrong row."""
    xp = ops_for(mask_query_index)
    row_of = xp.full((num_queries,), -1, "int64", like=mask_query_index)
    row_of[xp.asarray(mask_query_index, "int64", like=mask_query_index)] = xp.arange(
        mask_query_index.shape[0], like=mask_query_index
    )
    rows = row_of[queries]
    if bool((rows < 0).any()):
        missing = xp.tolist(queries[rows < 0])
        raise ValueError(f"{what} queries {missing} have no mask row")
    return rows


def upsample_masks(mask_logits, padded_size, image_size):
    """(Q, h, w) logits at stride 4 of the padded canvas → (Q, H_img, W_img): bilinear to the padded
    size (half-pixel centers, as ``F.interpolate(..., align_corners=False)``), then the image is
    cropped out of the canvas."""
    xp = ops_for(mask_logits)
    if mask_logits.shape[0] == 0:
        return xp.new_zeros(mask_logits, (0, *image_size))
    return xp.bilinear(mask_logits, tuple(padded_size), int(image_size[0]), int(image_size[1]))


def _pil_nearest_index(n_in, n_out, xp, like=None):
    """Source index of each output pixel exactly as PIL's NEAREST resize picks it
    (ImagingScaleAffine): the sampling position starts at scale / 2 and accumulates scale in double
    precision, then is truncated. (torch's "nearest-exact" rounds differently where a position falls
    on an integer.)"""
    scale = n_in / n_out
    pos = itertools.accumulate([scale] * (n_out - 1), initial=scale * 0.5)
    return xp.asarray([min(int(p), n_in - 1) for p in pos], "int64", like=like)


def _resize_ids(ids, output_size):
    """Nearest resize of an id map, sampling pixel centers as PIL's NEAREST (DETR resizes its id
    PNG)."""
    if tuple(ids.shape) == tuple(output_size):
        return ids
    xp = ops_for(ids)
    rows = _pil_nearest_index(ids.shape[0], output_size[0], xp, ids)
    cols = _pil_nearest_index(ids.shape[1], output_size[1], xp, ids)
    return ids[rows[:, None], cols[None, :]]


def panoptic_merge(
    mask_logits,
    classes,
    scores,
    is_thing,
    output_size,
    min_area=4,
    stuff_merge="first",
    upsample=None,
):
    """Merge per-query masks into one panoptic segmentation, as DETR's post-processing behaves.

    mask_logits: (Q, H, W) at the processed image size, for the kept queries in query order; or,
    with ``upsample=(padded_size, image_size)``, (Q, H_pad/4, W_pad/4) at stride 4 of the padded
    canvas, as :func:`upsample_masks` takes them: the merge then reads only their argmax at the
    image size (torch: ``argmax_bilinear``, in cache-sized row slabs on the CPU, never all of
    (Q, H, W); numpy upsamples them first).
    classes, scores: (Q,); is_thing: (K,) bool per contiguous class; output_size: (H_out, W_out).

    Each pixel goes to the query with the highest mask logit. With ``stuff_merge="first"`` (DETR),
    pixels of every stuff query are first relabeled to the lowest-index query of the same class; the
    duplicates then have zero area and fall to the small-segment filter, after which the argmax is
    recomputed without them (and without relabeling), repeatedly until no segment has area <=
    min_area at the output size. ``"union"`` keeps same-class stuff merged into one segment
    throughout. Segment ids are 1..n in query order; 0 is void. Returns (int32 (H_out, W_out),
    segments_info).
    """
    if stuff_merge not in ("first", "union"):
        raise ValueError(
            f"MODEL.DETR.TEST.STUFF_MERGE must be 'first' or 'union', got {stuff_merge!r}"
        )
    xp = ops_for(mask_logits)
    if upsample is not None and xp.name != "torch":  # numpy: upsampled once, dead pixels gathered
        mask_logits, upsample = upsample_masks(mask_logits, *upsample), None
    q = mask_logits.shape[0]
    is_thing = xp.asarray(is_thing, "bool", like=mask_logits)
    arange_q = xp.arange(q, like=mask_logits)
    # rep[i]: the query whose segment query i's pixels join (itself, or the first stuff query of its
    # class).
    rep = arange_q
    stuff = ~is_thing[classes]
    if q:
        same = (classes[:, None] == classes[None, :]) & stuff[:, None] & stuff[None, :]
        rep = xp.where(stuff, xp.argmax_rows(same), rep)
    alive = xp.full((q,), True, "bool", like=mask_logits)

    def argmax(queries=None, row_need=None):
        """Per pixel, the query of ``queries`` (ascending; None: all) with the highest logit (first
        one on ties)."""
        x = mask_logits if queries is None else mask_logits[queries]
        if upsample is None:
            return xp.argmax0(x)
        padded_size, (h, w) = upsample
        best = xp.argmax_bilinear(x, padded_size, int(h), int(w), row_need)
        return best if queries is None else queries[best]

    # raw: per pixel, the alive query with the highest logit (first one on ties); -1 where none is
    # alive.
    image_size = mask_logits.shape[1:] if upsample is None else tuple(upsample[1])
    raw = argmax() if q else xp.full(image_size, -1, "int64", like=mask_logits)
    relabel = True
    while True:
        relabeled = relabel and q > 0
        ids = xp.where(raw >= 0, rep[xp.clamp_min(raw, 0)], raw) if relabeled else raw
        ids = _resize_ids(ids, output_size)
        area = xp.bincount(xp.ravel(ids) + 1, q + 1)[1:]
        if stuff_merge == "union":
            small = alive & (rep == arange_q) & (area <= min_area)
            small = small[rep]  # a removed group takes its members along
        else:
            small = alive & (area <= min_area)
            relabel = False  # DETR relabels same-class stuff in the first pass only
        if not small.any():
            break
        alive &= ~small
        # Only pixels whose query was removed change owner: recompute the argmax there, over the
        # alive queries.
        dead = (raw >= 0) & ~alive[xp.clamp_min(raw, 0)]
        if not alive.any():
            raw = xp.full(raw.shape, -1, "int64", like=raw)
        elif dead.any() and upsample is not None:  # the rows with dead pixels, alive queries only
            raw = xp.where(dead, argmax(xp.nonzero(alive), dead.any(1)), raw)
        elif dead.any():
            sub = mask_logits[:, dead]  # (Q, P)
            sub[~alive] = float("-inf")
            raw[dead] = xp.argmax0(sub)
    # Final ids: 1..n over the segments that own pixels, in query order.
    owners = alive & (rep == arange_q) if relabeled else alive
    return _number_segments(ids, owners, classes, scores, is_thing)


def _number_segments(ids, owners, classes, scores, is_thing):
    """ids: (H, W) int64, the owning query per pixel (-1 = void); owners: (Q,) bool, the queries
    that own a segment. Returns (int32 map with ids 1..n in query order, 0 = void;
    segments_info)."""
    xp = ops_for(ids)
    q = owners.shape[0]
    new_id = xp.full((q + 1,), 0, "int32", like=ids)
    seg_queries = xp.nonzero(owners)
    new_id[seg_queries] = xp.astype(xp.arange(len(seg_queries), like=ids) + 1, "int32")
    panoptic = new_id[ids]  # -1 → index q → 0 (void)
    area = xp.tolist(xp.bincount(xp.astype(xp.ravel(panoptic), "int64"), len(seg_queries) + 1))
    is_thing_l, classes_l, scores_l = xp.tolist(is_thing), xp.tolist(classes), xp.tolist(scores)
    segments_info = [
        {
            "id": i + 1,
            "isthing": bool(is_thing_l[classes_l[qi]]),
            "category_id": int(classes_l[qi]),
            "score": float(scores_l[qi]),
            "area": int(area[i + 1]),
        }
        for i, qi in enumerate(xp.tolist(seg_queries))
    ]
    return panoptic, segments_info


def maskformer_merge(
    mask_logits, classes, scores, is_thing, output_size, min_area=4, overlap_threshold=0.8
):
    """Merge per-query masks as MaskFormer's panoptic inference does (``PANOPTIC_MERGE:
    "maskformer"``).

    Arguments as :func:`panoptic_merge`. Each pixel goes to the query with the highest score x mask
    probability; a query's segment is the pixels it wins where its own mask probability is >= 0.5. A
    query that wins fewer than ``overlap_threshold`` times the pixels of its own mask (probability
    >= 0.5) is dropped, so a duplicate that loses most of its mask to a more confident query does
    not split the object. Stuff queries of one class form one segment, under the id of the first.
    Segments with area <= min_area at the output size are removed; the pixels of removed queries are
    void (0).
    """
    xp = ops_for(mask_logits)
    q = mask_logits.shape[0]
    is_thing = xp.asarray(is_thing, "bool", like=mask_logits)
    if q == 0:
        void = xp.full(tuple(output_size), -1, "int64", like=mask_logits)
        none = xp.full((0,), False, "bool", like=mask_logits)
        return _number_segments(void, none, classes, scores, is_thing)
    h, w = mask_logits.shape[1:]
    arange_q = xp.arange(q, like=mask_logits)
    # (H*W,) the query with the highest score x probability
    prob = xp.sigmoid(mask_logits)
    prob *= scores[:, None, None]
    winner = xp.ravel(xp.argmax0(prob))
    del prob
    own = (mask_logits >= 0).reshape(q, h * w)  # (Q, H*W): probability >= 0.5
    won_area = xp.bincount(winner, q)
    own_area = xp.count_rows(own)
    in_segment = xp.pick_rows(own, winner)  # the winner's own probability is >= 0.5
    seg_area = xp.bincount(winner[in_segment], q)
    # won / own >= threshold, in double precision as MaskFormer's Python division
    ok = (
        (own_area > 0)
        & (seg_area > 0)
        & (
            xp.astype(won_area, "float64") / xp.astype(xp.clamp_min(own_area, 1), "float64")
            >= overlap_threshold
        )
    )
    # Same-class stuff joins the first surviving query of its class.
    stuff = ~is_thing[classes]
    same = (classes[:, None] == classes[None, :]) & stuff[:, None] & stuff[None, :] & ok[None, :]
    rep = xp.where(stuff & ok, xp.argmax_rows(same), arange_q)
    ids = xp.where(in_segment & ok[winner], rep[winner], -1).reshape(h, w)
    ids = _resize_ids(ids, output_size)
    area = xp.bincount(xp.ravel(ids) + 1, q + 1)[1:]
    owners = ok & (rep == arange_q) & (area > min_area)
    ids = xp.where((ids >= 0) & owners[xp.clamp_min(ids, 0)], ids, -1)
    return _number_segments(ids, owners, classes, scores, is_thing)


def merge_kept_masks(
    mask_logits,
    rows,
    classes,
    scores,
    is_thing,
    padded_size,
    image_size,
    output_size,
    merge="detr",
    min_area=4,
    stuff_merge="first",
    overlap_threshold=0.8,
    upsampled=None,
):
    """The panoptic merge (``merge``: "detr", :func:`panoptic_merge`, or "maskformer",
    :func:`maskformer_merge`) of the kept queries, whose masks are the rows ``rows`` (Q,) of
    ``mask_logits`` (M, H_pad/4, W_pad/4); classes, scores: (Q,) theirs. ``upsampled``: all of
    ``mask_logits`` already upsampled to the image (:func:`upsample_masks`), when the caller has
    them, read instead of upsampling again. Returns (int32 (H_out, W_out), segments_info)."""
    if merge not in ("detr", "maskformer"):
        raise ValueError(
            f"MODEL.DETR.TEST.PANOPTIC_MERGE must be 'detr' or 'maskformer', got {merge!r}"
        )
    args = (classes, scores, is_thing, output_size, min_area)
    if merge == "maskformer":
        masks = (
            upsampled[rows]
            if upsampled is not None
            else upsample_masks(mask_logits[rows], padded_size, image_size)
        )
        return maskformer_merge(masks, *args, overlap_threshold)
    if upsampled is not None:
        return panoptic_merge(upsampled[rows], *args, stuff_merge)
    # from the stride-4 logits: the argmax in row slabs, never (Q, H, W) at once
    return panoptic_merge(mask_logits[rows], *args, stuff_merge, upsample=(padded_size, image_size))


def panoptic_inference(
    logits,
    mask_logits,
    mask_query_index,
    is_thing,
    padded_size,
    image_size,
    output_size,
    threshold=0.85,
    merge="detr",
    min_area=4,
    stuff_merge="first",
    overlap_threshold=0.8,
):
    """One image's panoptic segmentation from DETR's outputs, by the eager model's functions
    (:func:`select_queries`, :func:`mask_rows`, :func:`merge_kept_masks`).

    logits: (N, K+1); mask_logits: (M, H_pad/4, W_pad/4) of the queries ``mask_query_index`` (M,)
    (must include every query that passes ``threshold``); padded_size: the model input's
    (H_pad, W_pad); image_size: the image's (H, W) in it; output_size: the size of the returned map.
    merge: "detr" or "maskformer". Returns (int32 (H_out, W_out) segment ids, 0 = void;
    segments_info).
    """
    xp = ops_for(logits)
    keep, scores, labels = select_queries(logits, threshold)
    kept = xp.nonzero(keep)
    try:
        rows = mask_rows(mask_query_index, kept, logits.shape[0], "kept")
    except ValueError as e:
        raise ValueError(
            f"{e}: they pass the threshold {threshold}, but the model was exported with a higher "
            "threshold; export again or raise the threshold"
        ) from None
    return merge_kept_masks(
        mask_logits,
        rows,
        labels[kept],
        scores[kept],
        is_thing,
        padded_size,
        image_size,
        output_size,
        merge,
        min_area,
        stuff_merge,
        overlap_threshold,
    )
