"""Panoptic post-processing: hand-built cases with known answers, and a literal port of DETR's
PostProcessPanoptic (PIL nearest resize) on random cases."""

import numpy as np
import pytest
import torch
from detr_test_utils import NUM_QUERIES, build_tiny_model, make_input
from PIL import Image

from detr_panoptic_d2.modeling import maskformer_merge, panoptic_merge, select_queries
from detr_panoptic_d2.modeling.postprocess import upsample_masks

IS_THING = torch.tensor([True, True, False, False])  # classes 0, 1 things; 2, 3 stuff
LOW, HIGH = -5.0, 10.0


def S(start, stop):
    """A hashable stand-in for slice(start, stop) (slices are not hashable before Python 3.12)."""
    return ("S", start, stop)


def _index(i):
    return slice(i[1], i[2]) if isinstance(i, tuple) else i


def column_logits(h, w, spec):
    """(Q, h, w) logits: spec[q] = {column(s) or (rows, cols): value}, LOW elsewhere; ranges given
    as S(a, b)."""
    out = torch.full((len(spec), h, w), LOW)
    for q, regions in enumerate(spec):
        for where, value in regions.items():
            if isinstance(where, tuple) and where[0] != "S":
                out[q][_index(where[0]), _index(where[1])] = value
            else:
                out[q][:, _index(where)] = value
    return out


def check_segments_info(panoptic, info, classes, scores, expected_queries):
    """ids 1..n in query order, fields, and area equal to the pixel count of each id."""
    assert panoptic.dtype == torch.int32
    assert [s["id"] for s in info] == list(range(1, len(info) + 1))
    assert set(torch.unique(panoptic).tolist()) <= {0} | {s["id"] for s in info}
    for s, q in zip(info, expected_queries):
        assert set(s) == {"id", "category_id", "isthing", "score", "area"}
        assert s["category_id"] == int(classes[q])
        assert s["isthing"] == bool(IS_THING[classes[q]])
        assert s["score"] == pytest.approx(float(scores[q]))
        assert s["area"] == int((panoptic == s["id"]).sum())
    assert len(info) == len(expected_queries)


# ---- select_queries ------------------------------------------------------------------------------
def test_select_queries_strict_threshold_and_no_object():
    logits = torch.tensor(
        [
            [4.0, 0.0, 0.0, 0.0, 0.0],  # confident class 0
            [0.0, 0.0, 0.0, 0.0, 6.0],  # confident no-object: excluded
            [1.0, 0.9, 0.0, 0.0, 0.0],  # argmax class 0, low score
            [0.0, 0.0, 3.0, 0.0, 2.9],  # argmax class 2 just above no-object
        ]
    )
    keep, scores, labels = select_queries(logits, 0.0)
    probs = logits.softmax(-1)
    torch.testing.assert_close(scores, probs.max(-1).values)
    assert labels.tolist() == [0, 4, 0, 2]
    assert keep.tolist() == [True, False, True, True]
    # strictly greater: a threshold equal to a score drops that query
    keep, _, _ = select_queries(logits, float(scores[2]))
    assert keep.tolist() == [True, False, False, True]
    keep, _, _ = select_queries(logits, float(scores[0]))
    assert not keep[0]
    keep, _, _ = select_queries(logits, 1.0)
    assert not keep.any()


# ---- stuff merging -------------------------------------------------------------------------------
def _stuff_duplicate_case():
    """8x8. q0 thing (class 0) owns cols 0-1, q1 and q2 both stuff class 2 own cols 2-4 and 5-7.
    Without q2, cols 5-6 go to q0 (second highest) and col 7 to q1."""
    h = w = 8
    logits = column_logits(
        h,
        w,
        [
            {S(0, 2): HIGH, S(5, 7): 0.0},
            {S(2, 5): HIGH, 7: 1.0},
            {S(5, 8): HIGH},
        ],
    )
    classes = torch.tensor([0, 2, 2])
    scores = torch.tensor([0.9, 0.95, 0.99])
    return logits, classes, scores


def test_stuff_merge_first_keeps_lowest_index_and_recomputes():
    logits, classes, scores = _stuff_duplicate_case()
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, "first")
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[:, [0, 1, 5, 6]] = 1  # q0
    expected[:, [2, 3, 4, 7]] = 2  # q1; q2 has disappeared
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])
    assert [s["area"] for s in info] == [32, 32]


def test_stuff_merge_union_keeps_one_segment():
    logits, classes, scores = _stuff_duplicate_case()
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, "union")
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:, 2:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])
    assert [s["area"] for s in info] == [16, 48]


def test_things_of_the_same_class_are_not_merged():
    logits, _, scores = _stuff_duplicate_case()
    classes = torch.tensor([0, 1, 1])  # all things
    for mode in ("first", "union"):
        panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, mode)
        assert [s["area"] for s in info] == [16, 24, 24]
        check_segments_info(panoptic, info, classes, scores, [0, 1, 2])


def test_first_query_of_stuff_class_small_after_merge_removes_whole_class():
    """DETR quirk: q1 (stuff, own area 2) survives the merged pass thanks to q2's pixels, q2 (area 0
    after relabeling) is removed; recomputed without relabeling, q1 has area 2 <= 4 and is removed
    too."""
    h = w = 8
    logits = column_logits(
        h,
        w,
        [
            {S(0, 4): HIGH, S(4, 8): 0.0},  # q0 thing: left half, second best on the right
            {(S(0, 2), 4): HIGH + 5},  # q1 stuff class 3: 2 pixels
            {S(4, 8): HIGH},  # q2 stuff class 3: the right half minus q1's pixels
        ],
    )
    classes = torch.tensor([0, 3, 3])
    scores = torch.tensor([0.9, 0.9, 0.9])
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, "first")
    assert torch.equal(panoptic, torch.ones(8, 8, dtype=torch.int32))  # all of it to q0
    check_segments_info(panoptic, info, classes, scores, [0])
    # "union" keeps the class as one segment
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, "union")
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:, 4:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])


def test_stuff_class_with_small_merged_area_disappears():
    h = w = 8
    logits = column_logits(
        h,
        w,
        [
            {S(0, 8): 0.0},  # q0 thing everywhere, second best
            {(S(0, 2), 0): HIGH},  # q1 stuff class 2: 2 px
            {(S(0, 2), 1): HIGH},  # q2 stuff class 2: 2 px  -> merged area 4 <= 4
        ],
    )
    classes = torch.tensor([1, 2, 2])
    scores = torch.tensor([0.5, 0.6, 0.7])
    for mode in ("first", "union"):
        panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, mode)
        assert torch.equal(panoptic, torch.ones(8, 8, dtype=torch.int32)), mode
        check_segments_info(panoptic, info, classes, scores, [0])


# ---- small segments, empty results, output size --------------------------------------------------
def test_small_segments_removed_at_threshold():
    h = w = 8
    logits = column_logits(
        h,
        w,
        [
            {S(0, 8): 0.0},
            {(S(0, 4), 0): HIGH},  # area 4: removed (<=)
            {(S(0, 5), 7): HIGH},  # area 5: kept
            {(S(6, 8), S(3, 5)): HIGH},  # area 4: removed
        ],
    )
    classes = torch.tensor([0, 1, 1, 0])
    scores = torch.rand(4)
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4)
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:5, 7] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 2])
    # a different min_area
    _, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 3)
    assert [s["area"] for s in info] == [64 - 13, 4, 5, 4]


def test_nothing_kept():
    panoptic, info = panoptic_merge(
        torch.zeros(0, 6, 7), torch.zeros(0, dtype=torch.long), torch.zeros(0), IS_THING, (12, 5)
    )
    assert (
        info == []
        and panoptic.shape == (12, 5)
        and panoptic.dtype == torch.int32
        and not panoptic.any()
    )


def test_everything_small_gives_void():
    logits = column_logits(2, 4, [{S(0, 2): HIGH}, {S(2, 4): HIGH}])  # 4 px each
    panoptic, info = panoptic_merge(logits, torch.tensor([0, 2]), torch.ones(2), IS_THING, (2, 4))
    assert info == [] and not panoptic.any() and panoptic.shape == (2, 4)


def test_output_size_upsampled_areas_at_output_size():
    # 4x4 input: q1 has 4 px (would be removed at the input size) but 16 px at 8x8: kept
    logits = column_logits(4, 4, [{S(0, 4): 0.0}, {(S(0, 2), S(2, 4)): HIGH}])
    classes, scores = torch.tensor([0, 1]), torch.tensor([0.8, 0.9])
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8))
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:4, 4:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])
    assert [s["area"] for s in info] == [48, 16]


def test_output_size_downsampled_pil_nearest():
    # 8x8 input, output 4x4: PIL nearest samples input pixel (2i+1, 2j+1)
    logits = column_logits(
        8,
        8,
        [
            {S(0, 8): 0.0},
            {(S(0, 4), S(0, 4)): HIGH},  # 16 px in, 4 px out → removed at the output size
            {
                (S(4, 8), S(3, 8)): HIGH
            },  # 20 px in; out: rows 2-3, cols with 2j+1 >= 3 → j 1..3 = 6 px
        ],
    )
    classes, scores = torch.tensor([0, 1, 2]), torch.tensor([0.7, 0.8, 0.9])
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, (4, 4))
    expected = torch.ones(4, 4, dtype=torch.int32)
    expected[2:, 1:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 2])
    assert [s["area"] for s in info] == [10, 6]


def test_invalid_stuff_merge():
    logits, classes, scores = _stuff_duplicate_case()
    with pytest.raises(ValueError, match="STUFF_MERGE"):
        panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4, "biggest")


# ---- against a literal port of DETR's PostProcessPanoptic ----------------------------------------
def detr_reference(mask_logits, classes, is_thing, output_size, min_area=4):
    """DETR's loop (models/segmentation.py, PostProcessPanoptic), ids shifted by +1 with 0 as void.
    Returns (id map, [(query index, area)])."""
    h, w = mask_logits.shape[-2:]
    classes = classes.tolist()
    stuff_equiv = {}
    for k, c in enumerate(classes):
        if not is_thing[c]:
            stuff_equiv.setdefault(c, []).append(k)

    def get_ids_area(masks, n, dedup=False):
        m_id = np.zeros((h, w), dtype=np.int64) if n == 0 else masks.argmax(0).numpy()
        if dedup:
            for equiv in stuff_equiv.values():
                if len(equiv) > 1:
                    for eq in equiv:
                        m_id[m_id == eq] = equiv[0]
        img = Image.fromarray(m_id.astype(np.uint8)).resize(
            output_size[::-1], resample=Image.NEAREST
        )
        m_id = np.asarray(img).astype(np.int64)
        return [int((m_id == i).sum()) for i in range(n)], m_id

    cur = list(range(len(classes)))
    area, m_id = get_ids_area(mask_logits, len(cur), dedup=True)
    if cur:
        while True:
            small = [a <= min_area for a in area]
            if not any(small):
                break
            cur = [q for q, s in zip(cur, small) if not s]
            area, m_id = get_ids_area(mask_logits[cur], len(cur))
    ids = m_id + 1 if cur else np.zeros(output_size, dtype=np.int64)
    return torch.from_numpy(ids), list(zip(cur, area))


def random_merge_case(seed, stuff_duplicates):
    """0-6 queries of smooth blob logits (segments of varied sizes, many of them small) on a 6-12 px
    canvas, random classes and scores. Returns (logits (Q, h, w), classes, scores, (h, w))."""
    g = torch.Generator().manual_seed(seed)
    q = int(torch.randint(0, 7, (1,), generator=g))
    h, w = [int(v) for v in torch.randint(6, 13, (2,), generator=g)]
    coarse = torch.randn(q, 3, 3, generator=g) * 3
    logits = (
        torch.nn.functional.interpolate(coarse[:, None], size=(h, w), mode="bilinear")[:, 0]
        if q
        else torch.zeros(0, h, w)
    )
    logits = logits + 0.3 * torch.randn(q, h, w, generator=g)
    classes = torch.randint(0, 4, (q,), generator=g)
    if q > 2 and stuff_duplicates:
        classes[1:3] = 2  # guaranteed stuff duplicates
    scores = torch.rand(q, generator=g)
    return logits, classes, scores, (h, w)


@pytest.mark.parametrize("seed", range(12))
def test_first_mode_matches_detr_reference(seed):
    logits, classes, scores, (h, w) = random_merge_case(seed, stuff_duplicates=seed % 2)
    out_size = [(h, w), (2 * h + 1, w + 3), (h - 2, (w * 2) // 3)][seed % 3]
    panoptic, info = panoptic_merge(logits, classes, scores, IS_THING, out_size, 4, "first")
    ref_ids, ref_segments = detr_reference(logits, classes, IS_THING, out_size)
    assert panoptic.shape == out_size
    assert torch.equal(panoptic.long(), ref_ids)
    assert [(s["category_id"], s["area"]) for s in info] == [
        (int(classes[qi]), a) for qi, a in ref_segments
    ]
    check_segments_info(panoptic, info, classes, scores, [qi for qi, _ in ref_segments])


# ---- through the model ---------------------------------------------------------------------------
@pytest.mark.parametrize("instances", [True, False])
@pytest.mark.parametrize("mode", ["detr", "maskformer"])
def test_model_panoptic_output_with_patched_heads(monkeypatch, mode, instances):
    """Crafted logits and mask logits through DetrPanoptic.inference: only kept queries reach the
    mask head, and the panoptic output is the configured merge of the upsampled, cropped masks at
    the requested size (DETR's merge without instances: from the stride-4 logits)."""
    model = build_tiny_model(mask_head=True, **{"MODEL.DETR.TEST.PANOPTIC_MERGE": mode}).eval()
    post = model.postprocessor
    post.instance_on = instances
    post.is_thing = IS_THING.clone()[:4].new_ones(5)
    post.is_thing[2:4] = False
    post.object_mask_threshold = 0.5
    real_detr = model.detr.forward
    logits = torch.full((1, NUM_QUERIES, 6), -10.0)
    chosen = {1: 0, 4: 2, 6: 2, 8: 3}  # query → class; others no-object
    for qi in range(NUM_QUERIES):
        logits[0, qi, chosen.get(qi, 5)] = 10.0
        logits[0, qi, 3] = max(
            logits[0, qi, 3].item(), -5.0
        )  # best real class of no-object queries: stuff
    requested = []

    def detr(images, mask, *args, **kwargs):
        out, features = real_detr(images, mask)
        out["pred_logits"] = logits
        return out, features

    def mask_head(features, b, q, **kwargs):
        requested.append(q.tolist())
        h4, w4 = features["backbone"]["res2"].shape[-2:]
        m = torch.full((len(q), h4, w4), -3.0)
        for row, qi in enumerate(q.tolist()):
            m[row, :, (qi * 3) % w4 : (qi * 3) % w4 + 6] = float(qi)
        return m

    monkeypatch.setattr(model.detr, "forward", detr)
    monkeypatch.setattr(model.mask_head, "forward", mask_head)
    x = make_input(64, 96, 0, height=40, width=60)
    with torch.no_grad():
        (res,) = model([x])
    assert requested == [[1, 4, 6, 8]]  # kept queries (and thing queries for instances: 1 only)
    kept_q = torch.tensor([1, 4, 6, 8])
    masks = mask_head({"backbone": {"res2": torch.zeros(1, 1, 16, 24)}}, None, kept_q)
    up = upsample_masks(masks, (64, 96), (64, 96))
    probs = logits[0].softmax(-1)
    args = (
        up,
        torch.tensor([0, 2, 2, 3]),
        probs[kept_q].max(-1).values,
        post.is_thing,
        (40, 60),
        4,
    )
    exp_pan, exp_info = (
        panoptic_merge(*args, "first") if mode == "detr" else maskformer_merge(*args, 0.8)
    )
    pan, info = res["panoptic_seg"]
    assert torch.equal(pan, exp_pan) and info == exp_info
    # the duplicate stuff query 6 merged into query 4; with MaskFormer's merge query 1 (thing) loses
    # half of its mask to the more confident mask of query 8 and is dropped
    assert [s["category_id"] for s in info] == ([0, 2, 3] if mode == "detr" else [2, 3])
    if not instances:
        assert "instances" not in res
        return
    inst = res["instances"]
    assert inst.pred_classes.tolist() == [0] and inst.pred_masks.shape == (1, 40, 60)


@pytest.mark.parametrize(
    "size_in,size_out",
    [
        ((12, 12), (25, 15)),
        ((2, 7), (7, 2)),
        ((8, 8), (4, 4)),
        ((40, 53), (97, 31)),
        ((800, 1066), (480, 640)),
    ],
)
def test_id_map_resize_matches_pil_nearest(size_in, size_out):
    """DETR resizes its id PNG with PIL's NEAREST; torch's "nearest-exact" picks other pixels where
    the sampling position falls on an integer (e.g. 12 → 15: output column 7)."""
    from detr_panoptic_runtime.postprocess import _resize_ids

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(-1, 200, size_in, generator=g)
    pil = Image.fromarray(ids.int().numpy(), mode="I").resize(
        size_out[::-1], resample=Image.NEAREST
    )
    assert torch.equal(
        _resize_ids(ids, size_out), torch.from_numpy(np.asarray(pil).astype(np.int64))
    )


# ---- MaskFormer's merge (PANOPTIC_MERGE: "maskformer") -------------------------------------------
def maskformer_reference(mask_logits, classes, scores, is_thing, overlap_threshold=0.8):
    """MaskFormer's panoptic inference written as its per-query loop (same size, no area filter).
    Returns (id map with 0 as void, [query index of each segment])."""
    probs = mask_logits.sigmoid()
    panoptic = torch.zeros(mask_logits.shape[1:], dtype=torch.int32)
    if len(classes) == 0:
        return panoptic, []
    winner = (scores[:, None, None] * probs).argmax(0)
    segments, stuff_segment = [], {}
    for k, c in enumerate(classes.tolist()):
        won, own = winner == k, probs[k] >= 0.5
        segment = won & own
        if int(won.sum()) == 0 or int(own.sum()) == 0 or int(segment.sum()) == 0:
            continue
        if int(won.sum()) / int(own.sum()) < overlap_threshold:
            continue
        if not is_thing[c] and c in stuff_segment:
            panoptic[segment] = stuff_segment[c]
            continue
        segments.append(k)
        panoptic[segment] = len(segments)
        if not is_thing[c]:
            stuff_segment[c] = len(segments)
    return panoptic, segments


@pytest.mark.parametrize("seed", range(12))
def test_maskformer_merge_matches_reference(seed):
    logits, classes, scores, (h, w) = random_merge_case(100 + seed, stuff_duplicates=seed % 2)
    overlap = [0.8, 0.5, 0.0][seed % 3]
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (h, w), 0, overlap)
    ref_ids, ref_queries = maskformer_reference(logits, classes, scores, IS_THING, overlap)
    assert torch.equal(panoptic, ref_ids)
    check_segments_info(panoptic, info, classes, scores, ref_queries)


def test_maskformer_merge_drops_less_confident_duplicate():
    """Two thing queries on one object: DETR's merge gives it to the higher mask logit (the
    duplicate); MaskFormer's gives it to the higher score, and the duplicate, left without its mask,
    is dropped."""
    logits = column_logits(8, 8, [{S(0, 4): HIGH}, {S(0, 4): HIGH + 1}, {S(4, 8): HIGH}])
    classes, scores = torch.tensor([0, 0, 2]), torch.tensor([0.9, 0.6, 0.95])
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (8, 8), 4)
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:, 4:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 2])
    _, detr_info = panoptic_merge(logits, classes, scores, IS_THING, (8, 8), 4)
    assert [s["score"] for s in detr_info] == pytest.approx([0.6, 0.95])


def test_maskformer_merge_overlap_threshold_and_void():
    """q1 wins 3 of the 5 columns of its mask (q0 is more confident on the shared ones): dropped at
    0.8, its columns become void; kept at 0.5. Columns no mask covers with probability >= 0.5 are
    void."""
    logits = column_logits(6, 10, [{S(0, 5): HIGH}, {S(3, 8): HIGH}])
    classes, scores = torch.tensor([0, 1]), torch.tensor([0.9, 0.8])
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (6, 10), 4, 0.8)
    expected = torch.zeros(6, 10, dtype=torch.int32)
    expected[:, :5] = 1
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0])
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (6, 10), 4, 0.5)
    expected[:, 5:8] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])


def test_maskformer_merge_unions_stuff_of_one_class():
    logits = column_logits(8, 8, [{S(0, 2): HIGH}, {S(2, 5): HIGH}, {S(5, 8): HIGH}])
    classes, scores = torch.tensor([0, 2, 2]), torch.tensor([0.9, 0.95, 0.99])
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (8, 8), 4)
    expected = torch.ones(8, 8, dtype=torch.int32)
    expected[:, 2:] = 2
    assert torch.equal(panoptic, expected)
    check_segments_info(panoptic, info, classes, scores, [0, 1])


def test_maskformer_merge_small_segments_at_output_size():
    """q1 owns one column of 8 pixels; at output (16, 16) that is 32 pixels."""
    logits = column_logits(8, 8, [{S(0, 7): HIGH}, {7: HIGH}])
    classes, scores = torch.tensor([2, 0]), torch.tensor([0.9, 0.9])
    _, info = maskformer_merge(logits, classes, scores, IS_THING, (8, 8), 7)
    assert [s["area"] for s in info] == [56, 8]
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (8, 8), 8)
    assert [s["area"] for s in info] == [56] and int((panoptic == 0).sum()) == 8  # removed → void
    panoptic, info = maskformer_merge(logits, classes, scores, IS_THING, (16, 16), 31)
    assert panoptic.shape == (16, 16) and [s["area"] for s in info] == [224, 32]
    check_segments_info(panoptic, info, classes, scores, [0, 1])


def test_maskformer_merge_nothing_kept():
    panoptic, info = maskformer_merge(
        torch.zeros(0, 5, 6), torch.zeros(0, dtype=torch.long), torch.zeros(0), IS_THING, (7, 9)
    )
    assert panoptic.shape == (7, 9) and not panoptic.any() and info == []


@pytest.mark.parametrize(
    "key,value",
    [("PANOPTIC_MERGE", "mask2former"), ("OVERLAP_THRESHOLD", 1.5), ("OVERLAP_THRESHOLD", -0.1)],
)
def test_invalid_merge_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"MODEL.DETR.TEST.{key}"):
        build_tiny_model(mask_head=True, **{f"MODEL.DETR.TEST.{key}": value})
