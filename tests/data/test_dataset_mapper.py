import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from panopticapi.utils import id2rgb
from PIL import Image
from torchvision.ops import masks_to_boxes

from detr_panoptic_d2.config import add_detr_panoptic_config
from detr_panoptic_d2.data.dataset_mapper import DetrPanopticDatasetMapper
from detr_panoptic_runtime import image_io

H, W = 48, 64
# (segment id, category id, iscrowd, (y0, y1, x0, x1) half-open rectangle); large ids check
# survival.
SEGMENTS = [
    (1000, 0, 0, (2, 20, 3, 30)),
    (2_000_000, 5, 0, (25, 46, 0, 64)),
    (70_000, 1, 1, (5, 15, 40, 60)),  # crowd
    (12_345, 2, 0, (0, 24, 31, 38)),
]
COLORS = {1000: (255, 0, 0), 2_000_000: (0, 255, 0), 70_000: (0, 0, 255), 12_345: (255, 255, 0)}


def make_sample(tmp_path, segments=SEGMENTS, size=(H, W), name="img"):
    """Write an image (each segment painted a flat colour) and its panoptic PNG; return the dataset
    dict."""
    h, w = size
    ids = np.zeros((h, w), dtype=np.int64)
    image = np.full((h, w, 3), 128, dtype=np.uint8)
    scale_y, scale_x = h / H, w / W
    for seg_id, _, _, (y0, y1, x0, x1) in segments:
        ys = slice(int(y0 * scale_y), int(y1 * scale_y))
        xs = slice(int(x0 * scale_x), int(x1 * scale_x))
        ids[ys, xs] = seg_id
        image[ys, xs] = COLORS.get(seg_id, (0, 0, 0))
    img_file, png_file = tmp_path / f"{name}.png", tmp_path / f"{name}_pan.png"
    Image.fromarray(image).save(img_file)
    Image.fromarray(id2rgb(ids)).save(png_file)
    return {
        "file_name": str(img_file),
        "image_id": name,
        "pan_seg_file_name": str(png_file),
        "segments_info": [
            {"id": s, "category_id": c, "iscrowd": cr, "isthing": c < 3} for s, c, cr, _ in segments
        ],
    }


def mapper(augs=(), is_train=True, num_classes=10):
    return DetrPanopticDatasetMapper(
        is_train=is_train, augmentations=list(augs), image_format="RGB", num_classes=num_classes
    )


def default_cfg():
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    return cfg


def expected_masks(flip=False):
    masks = []
    for _, _, crowd, (y0, y1, x0, x1) in SEGMENTS:
        if crowd:
            continue
        m = np.zeros((H, W), dtype=bool)
        m[y0:y1, x0:x1] = True
        masks.append(m[:, ::-1] if flip else m)
    return np.stack(masks)


def test_masks_boxes_classes(tmp_path):
    d = make_sample(tmp_path)
    out = mapper()(d)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, H, W)
    assert out["file_name"] == d["file_name"] and "segments_info" in out and out["height"] == H
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (H, W)
    assert isinstance(inst.gt_masks, BitMasks) and isinstance(inst.gt_boxes, Boxes)
    assert inst.gt_classes.dtype == torch.int64
    assert inst.gt_classes.tolist() == [0, 5, 2]  # crowd (category 1) skipped
    assert inst.gt_masks.tensor.dtype == torch.bool
    np.testing.assert_array_equal(inst.gt_masks.tensor.numpy(), expected_masks())
    expected_boxes = [[x0, y0, x1 - 1, y1 - 1] for _, _, cr, (y0, y1, x0, x1) in SEGMENTS if not cr]
    assert inst.gt_boxes.tensor.tolist() == expected_boxes
    assert "segments_info" in d and "image" not in d  # input untouched


def test_horizontal_flip(tmp_path):
    out = mapper([T.RandomFlip(prob=1.0, horizontal=True)])(make_sample(tmp_path))
    inst = out["instances"]
    np.testing.assert_array_equal(inst.gt_masks.tensor.numpy(), expected_masks(flip=True))
    expected_boxes = [
        [W - x1, y0, W - 1 - x0, y1 - 1] for _, _, cr, (y0, y1, x0, x1) in SEGMENTS if not cr
    ]
    assert inst.gt_boxes.tensor.tolist() == expected_boxes
    # the image is flipped too: the red segment moved to the right
    assert out["image"][:, 10, W - 1 - 10].tolist() == [255, 0, 0]


def test_resize_scales(tmp_path):
    out = mapper([T.Resize((2 * H, 2 * W))])(make_sample(tmp_path))
    inst = out["instances"]
    assert out["image"].shape == (3, 2 * H, 2 * W) and inst.image_size == (2 * H, 2 * W)
    up = expected_masks().repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(inst.gt_masks.tensor.numpy(), up)
    expected_boxes = [
        [2 * x0, 2 * y0, 2 * x1 - 1, 2 * y1 - 1]
        for _, _, cr, (y0, y1, x0, x1) in SEGMENTS
        if not cr
    ]
    assert inst.gt_boxes.tensor.tolist() == expected_boxes


def test_crop_drops_emptied_segments(tmp_path):
    # keep rows 30..47 only: just the 2_000_000 segment (category 5) survives
    out = mapper([T.CropTransform(0, 30, W, H - 30)])(make_sample(tmp_path))
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [5]
    assert inst.gt_boxes.tensor.tolist() == [[0, 0, W - 1, 15]]


def test_no_segments(tmp_path):
    out = mapper([T.Resize((24, 32))])(make_sample(tmp_path, segments=[]))
    inst = out["instances"]
    assert len(inst) == 0 and inst.image_size == (24, 32)
    assert inst.gt_masks.tensor.shape == (0, 24, 32) and inst.gt_boxes.tensor.shape == (0, 4)
    assert inst.gt_classes.shape == (0,)


def test_crowd_only_image(tmp_path):
    """Only crowd segments: no instance (every query learns no-object), the PNG still checked."""
    crowd = [s for s in SEGMENTS if s[2]]
    inst = mapper()(make_sample(tmp_path, segments=crowd))["instances"]
    assert len(inst) == 0 and inst.gt_masks.tensor.shape == (0, H, W)


def test_many_segments_ids_survive(tmp_path):
    # 300 segments of 6x1 pixels: more than a uint8 index map can hold
    segs = [
        (100_000 + 7 * i, i % 10, 0, (i // W * 6, i // W * 6 + 6, i % W, i % W + 1))
        for i in range(300)
    ]
    out = mapper([T.Resize((2 * H, 2 * W))])(make_sample(tmp_path, segments=segs))
    inst = out["instances"]
    assert len(inst) == 300 and inst.gt_classes.tolist() == [i % 10 for i in range(300)]
    assert torch.equal(inst.gt_boxes.tensor, masks_to_boxes(inst.gt_masks.tensor))
    assert inst.gt_masks.tensor.sum(dim=(1, 2)).eq(2 * 6 * 2).all()


def test_test_mode(tmp_path):
    d = make_sample(tmp_path)
    (tmp_path / "img_pan.png").unlink()  # the panoptic PNG is not needed at test time
    out = DetrPanopticDatasetMapper(default_cfg(), is_train=False)(d)
    assert "instances" not in out and "segments_info" not in out and "pan_seg_file_name" not in out
    assert out["image"].shape == (3, 800, round(800 * W / H))  # ResizeShortestEdge(800, 1333)
    assert out["height"] == H and out["width"] == W


@pytest.mark.parametrize("seed", range(25))
def test_default_training_recipe(tmp_path, seed):
    cfg = default_cfg()
    assert cfg.INPUT.DETR_CROP.ENABLED
    m = DetrPanopticDatasetMapper(cfg, is_train=True)
    d = make_sample(tmp_path, size=(480, 640))
    np.random.seed(seed)
    out = m(d)
    inst = out["instances"]
    img = out["image"]
    masks = inst.gt_masks.tensor
    assert img.shape[1:] == masks.shape[1:] == inst.image_size
    assert min(inst.image_size) <= max(cfg.INPUT.MIN_SIZE_TRAIN)
    assert max(inst.image_size) <= cfg.INPUT.MAX_SIZE_TRAIN
    assert masks.any(dim=(1, 2)).all()  # no empty masks
    assert masks.sum(0).le(1).all()  # disjoint
    assert torch.equal(inst.gt_boxes.tensor, masks_to_boxes(masks))
    # ids intact and aligned with the image: each mask covers pixels of its segment's colour
    assert cfg.INPUT.FORMAT == "BGR"
    colour = {c: COLORS[s][::-1] for s, c, cr, _ in SEGMENTS if not cr}
    for cls, mask in zip(inst.gt_classes.tolist(), masks):
        pix = img[:, mask].T  # (area, 3)
        assert pix.median(dim=0).values.tolist() == list(colour[cls])
    # same seed, same result
    np.random.seed(seed)
    again = m(d)["instances"]
    assert torch.equal(again.gt_masks.tensor, masks) and torch.equal(
        again.gt_classes, inst.gt_classes
    )


def test_default_recipe_uses_crop(tmp_path):
    cfg = default_cfg()
    cfg.INPUT.DETR_CROP.PROB = 1.0
    cfg.INPUT.RANDOM_FLIP = "none"
    m = DetrPanopticDatasetMapper(cfg, is_train=True)
    d = make_sample(tmp_path, size=(480, 640))
    shapes = set()
    for seed in range(10):
        np.random.seed(seed)
        out = m(d)
        assert torch.equal(
            out["instances"].gt_boxes.tensor, masks_to_boxes(out["instances"].gt_masks.tensor)
        )
        h, w = out["image"].shape[1:]
        shapes.add(round(w / h, 2))
    assert len(shapes) > 1  # random crops change the aspect ratio (a plain resize keeps 4:3)


def test_missing_files(tmp_path):
    d = make_sample(tmp_path)
    (tmp_path / "img_pan.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_pan.png"):
        mapper()(d)
    d = make_sample(tmp_path)
    (tmp_path / "img.png").unlink()
    with pytest.raises(FileNotFoundError, match="img.png"):
        mapper()(d)
    with pytest.raises(FileNotFoundError, match="img.png"):
        mapper(is_train=False)(d)


def test_segment_absent_from_png(tmp_path):
    d = make_sample(tmp_path)
    d["segments_info"].append({"id": 4242, "category_id": 0, "iscrowd": 0, "isthing": True})
    with pytest.raises(ValueError, match=r"img_pan\.png.*4242"):
        mapper()(d)


def test_png_id_not_listed(tmp_path):
    d = make_sample(tmp_path)
    d["segments_info"] = [s for s in d["segments_info"] if s["id"] != 12_345]
    with pytest.raises(ValueError, match=r"img_pan\.png.*12345"):
        mapper()(d)


@pytest.mark.parametrize("bad", [-1, 10, 133])
def test_bad_category(tmp_path, bad):
    d = make_sample(tmp_path)
    d["segments_info"][0]["category_id"] = bad
    with pytest.raises(ValueError, match=rf"img_pan\.png.*1000.*{bad}"):
        mapper(num_classes=10)(d)


def test_empty_image(tmp_path, monkeypatch):
    """A decoder that returns a 0 x 0 image (Pillow cannot write one): an error naming the file."""
    d = make_sample(tmp_path)
    monkeypatch.setattr(image_io, "_decode", lambda f, name, what, limit: Image.new("RGB", (0, 0)))
    with pytest.raises(ValueError, match=r"img\.png is empty"):
        mapper()(d)


def test_size_mismatch_names_file(tmp_path):
    d = make_sample(tmp_path)
    d["height"], d["width"] = H + 1, W
    with pytest.raises(ValueError, match="img.png"):
        mapper()(d)


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


@pytest.mark.parametrize("is_train", [True, False])
@pytest.mark.parametrize("which", ["file_name", "pan_seg_file_name"])
def test_truncated_or_corrupt_file_names_it(tmp_path, is_train, which):
    """PIL's own message ("image file is truncated (85 bytes not processed)") names no file: the
    mapper's does, in training and in evaluation (which reads only the image)."""
    d = make_sample(tmp_path, size=(96, 128))
    jpeg = tmp_path / "img.jpg"
    Image.open(d["file_name"]).save(jpeg, quality=95)
    d["file_name"] = str(jpeg)
    _truncate(d[which])
    if which == "pan_seg_file_name" and not is_train:
        assert mapper(is_train=False)(d)["image"].shape == (3, 96, 128)  # the PNG is not read
        return
    with pytest.raises(OSError, match=f"{d[which]} cannot be read"):
        mapper(is_train=is_train)(d)
    open(d[which], "wb").write(b"not an image at all")
    with pytest.raises(OSError, match=f"{d[which]} cannot be read"):
        mapper(is_train=is_train)(d)
