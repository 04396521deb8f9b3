"""check_dataset: every problem of a registered panoptic set listed with its file, as the mapper
reads it."""

import json

import numpy as np
from dataset_layouts import register_custom_panoptic, write_layout
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from detr_panoptic_d2.data.checker import check_dataset


def _broken_copy(tmp_path):
    """A custom-layout set with one problem of each kind; returns (name, {kind: file}) ."""
    root = tmp_path / "set"
    write_layout(root, "custom", num_train=1, num_val=6, image_size=(96, 128), void_prob=0.0)
    ann_path = root / "annotations" / "panoptic_val.json"
    data = json.load(open(ann_path))
    anns = data["annotations"]
    image_dir, png_dir = root / "images" / "val", root / "panoptic" / "val"
    files = {}
    # 0: truncated image
    img0 = image_dir / data["images"][0]["file_name"]
    img0.write_bytes(img0.read_bytes()[:200])
    files["truncated"] = str(img0)
    # 1: missing panoptic PNG
    png1 = png_dir / anns[1]["file_name"]
    png1.unlink()
    files["missing_png"] = str(png1)
    # 2: a segment listed but absent from the PNG, and an unknown category id
    anns[2]["segments_info"].append(
        {"id": 77777, "category_id": 99, "iscrowd": 0, "area": 1, "bbox": [0] * 4}
    )
    files["absent"] = str(png_dir / anns[2]["file_name"])
    # 3: an id in the PNG that segments_info does not list
    png3 = png_dir / anns[3]["file_name"]
    ids = rgb2id(np.asarray(Image.open(png3).convert("RGB")))
    ids[:5, :5] = 424242
    Image.fromarray(id2rgb(ids)).save(png3)
    files["unlisted"] = str(png3)
    # 4: PNG of another size than its image
    png4 = png_dir / anns[4]["file_name"]
    Image.open(png4).resize((50, 40)).save(png4)
    files["size"] = str(png4)
    # 5: an image without segments (legal, counted)
    anns[5]["segments_info"] = []
    png5 = png_dir / anns[5]["file_name"]
    Image.fromarray(np.zeros((*Image.open(png5).size[::-1], 3), np.uint8)).save(png5)
    json.dump(data, open(ann_path, "w"))
    return root, files


def test_every_problem_listed_with_its_file(tmp_path):
    root, files = _broken_copy(tmp_path)
    # the unknown category id keeps Detectron2's loader from loading the set at all: listed from the
    # JSON
    name = register_custom_panoptic("checker_broken", root)[1]
    report = check_dataset(name, num_classes=9)
    text = "\n".join(report.problems)
    assert (
        "category ids [99] are not in the metadata" in text and "cannot load the data set" in text
    )
    # without that one, the loader works and every record is read
    data = json.load(open(root / "annotations" / "panoptic_val.json"))
    data["annotations"][2]["segments_info"][-1]["category_id"] = 3
    json.dump(data, open(root / "annotations" / "panoptic_val.json", "w"))
    name = register_custom_panoptic("checker_broken_known_ids", root)[1]
    report = check_dataset(name, num_classes=9)
    assert report.records == 6 and report.empty == 1
    by_kind = {
        "truncated": "cannot be read (corrupt or truncated?)",
        "missing_png": "Panoptic PNG file not found",
        "absent": "segment ids [77777] of segments_info are absent from it",
        "unlisted": "ids [424242] are not listed in segments_info",
        "size": "has size (40, 50)",
    }
    for kind, message in by_kind.items():
        assert any(files[kind] in p and message in p for p in report.problems), (
            kind,
            report.problems,
        )
    assert len(report.problems) == len(by_kind)
    # a class id beyond NUM_CLASSES: every segment of it is named
    small = check_dataset(name, num_classes=3)
    assert any("outside [0, 3)" in p for p in small.problems)
    assert any("MODEL.DETR.NUM_CLASSES is 3" in p for p in small.problems)


def test_clean_set_has_no_problem(tmp_path):
    root = tmp_path / "clean"
    write_layout(root, "custom", num_train=1, num_val=3, image_size=(96, 128))
    report = check_dataset(register_custom_panoptic("checker_clean", root)[1], num_classes=9)
    assert report.problems == [] and report.records == 3


def test_unregistered_name():
    assert "not a registered data set" in check_dataset("no_such_set_anywhere", 5).problems[0]
