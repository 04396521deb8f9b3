"""The runtime's post-processing on numpy equals the same code on torch (which the eager model
runs), and the runtime's image reading / test resize equal Detectron2's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detr_panoptic_runtime import (
    id2rgb,
    maskformer_merge,
    panoptic_inference,
    panoptic_merge,
    preprocess,
    read_image,
    resized_shape,
    rgb2id,
    select_queries,
    upsample_masks,
)
from detr_panoptic_runtime.array_ops import NumpyOps, TorchOps, ops_for

IS_THING = np.array([True, True, False, False, True])


def blob_case(seed, q_max=7, size=(6, 14), dup=True):
    """Smooth random mask logits (segments of varied sizes, many small), classes with stuff
    duplicates."""
    g = torch.Generator().manual_seed(seed)
    q = int(torch.randint(0, q_max, (1,), generator=g))
    h, w = [int(v) for v in torch.randint(size[0], size[1], (2,), generator=g)]
    coarse = torch.randn(q, 3, 3, generator=g) * 3
    logits = (
        F.interpolate(coarse[:, None], size=(h, w), mode="bilinear")[:, 0]
        if q
        else torch.zeros(0, h, w)
    )
    logits = logits + 0.3 * torch.randn(q, h, w, generator=g)
    classes = torch.randint(0, len(IS_THING), (q,), generator=g)
    if q > 2 and dup:
        classes[1:3] = 2
    scores = torch.rand(q, generator=g)
    return logits, classes, scores, (h, w)


def _np(*tensors):
    return tuple(t.numpy() for t in tensors)


def assert_same_result(res_t, res_n):
    (ids_t, info_t), (ids_n, info_n) = res_t, res_n
    assert isinstance(ids_n, np.ndarray) and ids_n.dtype == np.int32
    assert np.array_equal(ids_t.numpy(), ids_n)
    assert [{k: v for k, v in s.items() if k != "score"} for s in info_t] == [
        {k: v for k, v in s.items() if k != "score"} for s in info_n
    ]
    assert [s["score"] for s in info_t] == pytest.approx([s["score"] for s in info_n], abs=1e-6)


def test_ops_for_picks_the_backend():
    assert ops_for(np.zeros(2)) is NumpyOps
    assert isinstance(ops_for(torch.zeros(2)), TorchOps)


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("stuff_merge", ["first", "union"])
def test_detr_merge_numpy_equals_torch(seed, stuff_merge):
    logits, classes, scores, (h, w) = blob_case(seed, dup=seed % 2 == 0)
    out = [(h, w), (2 * h + 1, w + 3), (h - 2, (w * 2) // 3)][seed % 3]
    res_t = panoptic_merge(logits, classes, scores, torch.from_numpy(IS_THING), out, 4, stuff_merge)
    res_n = panoptic_merge(*_np(logits, classes, scores), IS_THING, out, 4, stuff_merge)
    assert_same_result(res_t, res_n)


@pytest.mark.parametrize(
    "q,h,w,image",
    [
        (5, 16, 32, (64, 128)),  # the whole canvas
        (3, 25, 40, (97, 155)),  # an image smaller than the canvas
        (55, 50, 68, (200, 270)),
        (1, 1, 33, (3, 130)),  # one input row
        (4, 20, 18, (80, 70)),  # narrower than SLAB_MIN_WIDTH: computed whole
    ],
)
@pytest.mark.parametrize("slab_bytes", [1, 1 << 14, 4 << 20])
def test_argmax_bilinear_in_slabs_equals_the_whole(monkeypatch, q, h, w, image, slab_bytes):
    import detr_panoptic_runtime.array_ops as array_ops

    monkeypatch.setattr(array_ops, "SLAB_BYTES", slab_bytes)  # 1: one input row per slab
    g = torch.Generator().manual_seed(q + h + w)
    x = torch.randn(q, h, w, generator=g) * 8
    padded = (4 * h, 4 * w)
    whole = upsample_masks(x, padded, image).max(0).indices
    assert torch.equal(TorchOps().argmax_bilinear(x, padded, *image), whole)
    need = torch.zeros(image[0], dtype=torch.bool)
    need[image[0] // 3 : image[0] // 2] = True  # only these rows are asked for
    part = TorchOps().argmax_bilinear(x, padded, *image, need)
    assert torch.equal(part[need], whole[need])
    assert int(part.min()) >= 0 and int(part.max()) < q  # the other rows: valid indices


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("stuff_merge", ["first", "union"])
def test_detr_merge_of_stride4_logits_equals_merge_of_upsampled(monkeypatch, seed, stuff_merge):
    """``upsample=(padded, image)`` (the argmax in row slabs, dead pixels recomputed on the rows
    that hold them) gives exactly the merge of the upsampled masks, on torch and numpy."""
    import detr_panoptic_runtime.array_ops as array_ops

    monkeypatch.setattr(array_ops, "SLAB_BYTES", 1 << 12)  # many slabs
    logits, classes, scores, _ = blob_case(200 + seed, q_max=9, size=(8, 12), dup=seed % 4 != 3)
    q, h, w = logits.shape
    x = logits.repeat(1, 1, 5)[..., : max(w * 5, 32)]  # stride-4 width >= SLAB_MIN_WIDTH
    padded = (4 * h, 4 * x.shape[-1])
    image = (padded[0] - seed % 3, padded[1] - 2 * (seed % 4))
    out = [image, (image[0] + 7, image[1] // 2), (image[0] // 3, image[1])][seed % 3]
    thing = torch.from_numpy(IS_THING)
    ref = panoptic_merge(
        upsample_masks(x, padded, image), classes, scores, thing, out, 40, stuff_merge
    )
    got = panoptic_merge(x, classes, scores, thing, out, 40, stuff_merge, upsample=(padded, image))
    assert_same_result(ref, (got[0].numpy(), got[1]))
    assert torch.equal(ref[0], got[0])
    got_n = panoptic_merge(
        *_np(x, classes, scores), IS_THING, out, 40, stuff_merge, upsample=(padded, image)
    )
    assert_same_result(ref, got_n)


@pytest.mark.parametrize("seed", range(16))
def test_maskformer_merge_numpy_equals_torch(seed):
    logits, classes, scores, (h, w) = blob_case(100 + seed, dup=seed % 2 == 0)
    out = [(h, w), (2 * h + 1, w + 3), (h - 2, (w * 2) // 3)][seed % 3]
    overlap = [0.8, 0.5, 0.0][seed % 3]
    res_t = maskformer_merge(logits, classes, scores, torch.from_numpy(IS_THING), out, 4, overlap)
    res_n = maskformer_merge(*_np(logits, classes, scores), IS_THING, out, 4, overlap)
    assert_same_result(res_t, res_n)


def test_select_queries_numpy_equals_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g) * 3
    keep_t, scores_t, labels_t = select_queries(logits, 0.5)
    keep_n, scores_n, labels_n = select_queries(logits.numpy(), 0.5)
    assert np.array_equal(keep_t.numpy(), keep_n) and np.array_equal(labels_t.numpy(), labels_n)
    np.testing.assert_allclose(scores_t.numpy(), scores_n, rtol=1e-6)
    assert scores_n.dtype == np.float32 and keep_n.dtype == bool


@pytest.mark.parametrize(
    "src,padded,image",
    [
        ((16, 24), (64, 96), (64, 96)),
        ((16, 24), (64, 96), (50, 77)),
        ((25, 18), (100, 72), (97, 70)),
        ((200, 334), (800, 1336), (800, 1333)),
        ((7, 3), (13, 29), (13, 29)),
        ((5, 5), (5, 5), (5, 5)),
    ],
)
def test_bilinear_numpy_equals_torch(src, padded, image):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *src, generator=g) * 8
    t = upsample_masks(x, padded, image)
    n = upsample_masks(x.numpy(), padded, image)
    assert n.shape == tuple(t.shape) == (3, *image) and n.dtype == np.float32
    np.testing.assert_allclose(n, t.numpy(), rtol=0, atol=1e-5)
    # and equal to the eager form: F.interpolate to the padded size, then the crop
    ref = F.interpolate(x[:, None], size=padded, mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(t, ref[:, : image[0], : image[1]])


def test_upsample_nothing():
    assert upsample_masks(np.zeros((0, 4, 5), np.float32), (16, 20), (15, 19)).shape == (0, 15, 19)
    assert upsample_masks(torch.zeros(0, 4, 5), (16, 20), (15, 19)).shape == (0, 15, 19)


@pytest.mark.parametrize("merge", ["detr", "maskformer"])
@pytest.mark.parametrize("seed", range(4))
def test_panoptic_inference_numpy_equals_torch(merge, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 12, len(IS_THING)
    logits = torch.randn(n, k + 1, generator=g) * 4
    _, _, labels = select_queries(logits, 0.3)
    query_index = torch.nonzero(labels != k)[:, 0]  # a superset of the kept queries
    mask_logits = F.interpolate(
        torch.randn(len(query_index), 1, 4, 5, generator=g) * 4, size=(10, 12), mode="bilinear"
    )[:, 0]
    args = dict(padded_size=(40, 48), image_size=(37, 45), output_size=(60, 70))
    kw = dict(threshold=0.3, merge=merge)
    res_t = panoptic_inference(
        logits, mask_logits, query_index, torch.from_numpy(IS_THING), **args, **kw
    )
    res_n = panoptic_inference(*_np(logits, mask_logits, query_index), IS_THING, **args, **kw)
    assert_same_result(res_t, res_n)
    assert len(res_t[1]) > 0 or merge == "maskformer"  # (MaskFormer's may drop them all)


def test_panoptic_inference_refuses_missing_masks():
    logits = torch.zeros(3, 3)
    logits[:, 0] = 10.0
    with pytest.raises(ValueError, match="have no mask"):
        panoptic_inference(
            logits, torch.zeros(1, 2, 2), torch.tensor([1]), IS_THING, (8, 8), (8, 8), (8, 8)
        )


# ---- image reading, test resize, PNG ids
# -------------------------------------------------------------------
@pytest.mark.parametrize(
    "hw,min_size,max_size",
    [
        ((480, 640), 800, 1333),
        ((640, 480), 800, 1333),
        ((100, 1000), 800, 1333),
        ((64, 96), 64, 96),
        ((81, 57), 112, 192),
        ((333, 500), 800, 1333),
    ],
)
def test_test_resize_equals_detectron2(hw, min_size, max_size):
    from detectron2.data import transforms as T

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    aug = T.ResizeShortestEdge(min_size, max_size)
    ref = aug.get_transform(image).apply_image(image)
    assert resized_shape(*hw, min_size, max_size) == ref.shape[:2]
    assert np.array_equal(preprocess(image, min_size, max_size), ref.transpose(2, 0, 1))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_read_image_equals_detectron2(tmp_path, orientation):
    from detectron2.data.detection_utils import read_image as d2_read_image

    rng = np.random.default_rng(orientation)
    img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    path = str(tmp_path / "x.jpg")
    img.save(path, exif=exif.tobytes(), quality=95)
    ours = read_image(path)
    assert np.array_equal(ours, d2_read_image(path, format="RGB"))
    assert ours.shape[:2] == ((30, 20) if orientation in (6, 8) else (20, 30))


def test_id2rgb_equals_panopticapi():
    from panopticapi.utils import id2rgb as ref_id2rgb

    ids = np.array([[0, 1, 255], [256, 70000, 16777215]])
    assert np.array_equal(id2rgb(ids), ref_id2rgb(ids))
    assert np.array_equal(rgb2id(id2rgb(ids)), ids)
