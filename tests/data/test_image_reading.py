"""The mapper and the checker with real-world image quirks: EXIF orientation tags (the panoptic PNG
must be in the displayed frame), 16-bit images, the pixel limit (INPUT.MAX_IMAGE_PIXELS) and
duplicate segment ids."""

import json
import logging

import numpy as np
import pytest
from dataset_layouts import register_custom_panoptic, write_layout
from detectron2.config import get_cfg
from panopticapi.utils import id2rgb
from PIL import Image

from detr_panoptic_d2.config import add_detr_panoptic_config, validate_config
from detr_panoptic_d2.data.checker import check_dataset
from detr_panoptic_d2.data.dataset_mapper import DetrPanopticDatasetMapper
from detr_panoptic_runtime.image_io import ImageTooLargeError

H, W = 24, 32
# the transposition that turns the displayed frame into the stored one, per EXIF orientation
TO_STORED = {
    2: Image.FLIP_LEFT_RIGHT,
    3: Image.ROTATE_180,
    4: Image.FLIP_TOP_BOTTOM,
    5: Image.TRANSPOSE,
    6: Image.ROTATE_90,
    7: Image.TRANSVERSE,
    8: Image.ROTATE_270,
}


def _displayed(size=(H, W)):
    """(image (H, W, 3), ids (H, W)) in the displayed frame: two segments in asymmetric places."""
    h, w = size
    ids = np.zeros((h, w), np.int64)
    ids[2:10, 3:12] = 1000
    ids[12:, w // 2 :] = 2000
    image = np.full((h, w, 3), 40, np.uint8)
    image[ids == 1000] = (250, 10, 10)
    image[ids == 2000] = (10, 250, 10)
    return image, ids


def _save_stored(array, path, orientation, **kwargs):
    """Save the displayed ``array`` as a file whose EXIF orientation gives it back."""
    image = Image.fromarray(array)
    if orientation != 1:
        image = image.transpose(TO_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **kwargs)


def _sample(tmp_path, orientation, png_frame="displayed", ext="png", size=(H, W)):
    """A dataset dict whose image carries ``orientation``; its PNG in ``png_frame``."""
    image, ids = _displayed(size)
    img_file, png_file = (
        tmp_path / f"img_o{orientation}.{ext}",
        tmp_path / f"pan_o{orientation}.png",
    )
    _save_stored(image, img_file, orientation, **({"quality": 95} if ext == "jpg" else {}))
    png = Image.fromarray(id2rgb(ids))
    if png_frame == "stored":
        png = png.transpose(TO_STORED[orientation])
    png.save(png_file)
    segments = [{"id": 1000, "category_id": 0, "iscrowd": 0}, {"id": 2000, "category_id": 1}]
    return {
        "file_name": str(img_file),
        "pan_seg_file_name": str(png_file),
        "segments_info": segments,
    }


def _mapper(is_train=True, max_pixels=None):
    return DetrPanopticDatasetMapper(
        is_train=is_train,
        augmentations=[],
        image_format="RGB",
        num_classes=5,
        max_pixels=max_pixels,
    )


@pytest.fixture
def mapper_warnings():
    """The warning messages the dataset mapper's logger emits during the test (whatever the
    propagation set by Detectron2's setup_logger)."""
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("detr_panoptic_d2.data.dataset_mapper")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_rotated_image_with_png_in_displayed_frame(tmp_path, orientation, mapper_warnings):
    d = _sample(tmp_path, orientation)
    out = _mapper()(d)
    image, ids = _displayed()
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), image)
    masks = out["instances"].gt_masks.tensor.numpy()
    assert np.array_equal(masks, np.stack([ids == 1000, ids == 2000]))
    assert mapper_warnings == []  # the sizes tell: nothing to warn about


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_png_in_stored_frame_is_named(tmp_path, orientation):
    d = _sample(tmp_path, orientation, png_frame="stored", ext="jpg")
    with pytest.raises(ValueError) as e:
        _mapper()(d)
    msg = str(e.value)
    assert d["pan_seg_file_name"] in msg and d["file_name"] in msg
    assert f"EXIF orientation {orientation}" in msg and "as stored" in msg
    assert "displayed frame" in msg and "rotate the PNG" in msg and "strip" in msg


@pytest.mark.parametrize("orientation,size", [(3, (H, W)), (2, (H, W)), (6, (W, W))])
def test_orientation_sizes_cannot_tell_warns_once(tmp_path, orientation, size, mapper_warnings):
    d = _sample(tmp_path, orientation, size=size)
    for _ in range(3):
        _mapper()(d)
    warnings = mapper_warnings
    assert len(warnings) == 1, warnings
    assert d["file_name"] in warnings[0] and d["pan_seg_file_name"] in warnings[0]
    assert f"EXIF orientation {orientation}" in warnings[0] and "displayed frame" in warnings[0]


def test_duplicate_segment_ids_are_an_error(tmp_path):
    d = _sample(tmp_path, 1)
    d["segments_info"].append({"id": 1000, "category_id": 2, "iscrowd": 0})
    with pytest.raises(ValueError, match=r"pan_o1\.png: segment ids \[1000\] are listed more than"):
        _mapper()(d)


def test_16bit_image_scaled_in_mapper(tmp_path):
    values = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 80).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # "I;16"
    out = _mapper(is_train=False)({"file_name": str(path)})
    assert np.array_equal(out["image"].numpy(), np.stack([(values >> 8).astype(np.uint8)] * 3))


def _cfg(**values):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in values.items():
        cfg.INPUT[key] = value
    return cfg


def test_max_image_pixels_from_config(tmp_path):
    assert _cfg().INPUT.MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    d = _sample(tmp_path, 1)
    for is_train in (True, False):
        mapper = DetrPanopticDatasetMapper(_cfg(MAX_IMAGE_PIXELS=H * W - 1), is_train=is_train)
        with pytest.raises(ImageTooLargeError, match=rf"img_o1\.png has 32 x 24 = {H * W} pixels"):
            mapper(d)
    assert DetrPanopticDatasetMapper(_cfg(MAX_IMAGE_PIXELS=0), is_train=True)(d)["instances"]
    validate_config(_cfg(MAX_IMAGE_PIXELS=0))
    with pytest.raises(ValueError, match="INPUT.MAX_IMAGE_PIXELS must be an integer >= 0"):
        validate_config(_cfg(MAX_IMAGE_PIXELS=-1))


def test_checker_lists_exif_images_and_stored_frame_pngs(tmp_path):
    root = tmp_path / "set"
    write_layout(root, "custom", num_train=1, num_val=4, image_size=(96, 128), void_prob=0.0)
    ann_path = root / "annotations" / "panoptic_val.json"
    data = json.load(open(ann_path))
    images, anns = data["images"], data["annotations"]
    image_dir, png_dir = root / "images" / "val", root / "panoptic" / "val"
    files = [str(image_dir / im["file_name"]) for im in images]
    pngs = [str(png_dir / a["file_name"]) for a in anns]
    # 0: orientation 6, PNG in the displayed frame (right); 1: orientation 3 (right);
    # 2: orientation 8, PNG in the stored frame (wrong)
    for i, orientation in ((0, 6), (1, 3), (2, 8)):
        _save_stored(np.asarray(Image.open(files[i])), files[i], orientation, quality=95)
    Image.open(pngs[2]).transpose(TO_STORED[8]).save(pngs[2])
    # 3: a segment listed twice
    anns[3]["segments_info"].append(dict(anns[3]["segments_info"][0]))
    duplicated = anns[3]["segments_info"][0]["id"]
    json.dump(data, open(ann_path, "w"))
    report = check_dataset(register_custom_panoptic("checker_exif", root)[1], num_classes=9)
    assert report.records == 4
    assert len(report.exif) == 3
    for i, orientation in ((0, 6), (1, 3), (2, 8)):
        (note,) = [n for n in report.exif if files[i] in n]
        assert f"EXIF orientation {orientation}" in note and pngs[i] in note
        assert (
            "displayed frame" in note and f"({images[i]['height']}, {images[i]['width']})" in note
        )
    assert len(report.problems) == 2, report.problems
    (stored,) = [p for p in report.problems if pngs[2] in p]
    assert "EXIF orientation 8" in stored and "as stored" in stored and files[2] in stored
    (dup,) = [p for p in report.problems if pngs[3] in p]
    assert f"segment ids [{duplicated}] are listed more than once" in dup
