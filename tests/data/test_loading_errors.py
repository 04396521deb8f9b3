"""load_dataset_dicts: a KeyError is reported as an unknown category id only when it is one; a
missing field of the annotation file is named as a missing key, with the file and the data set."""

import json

import pytest
from dataset_layouts import register_custom_panoptic, write_layout
from detectron2.data import DatasetCatalog, MetadataCatalog

from detr_panoptic_d2.engine import load_dataset_dicts


@pytest.fixture(scope="module")
def layout_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading_errors") / "set"
    write_layout(root, "custom", num_train=1, num_val=2, image_size=(48, 64))
    return root


def _break(data, kind):
    ann = data["annotations"][1]
    if kind == "no_segments_info":
        del ann["segments_info"]
    elif kind == "no_file_name":
        del ann["file_name"]
    elif kind == "no_annotations":
        del data["annotations"]
    elif kind == "segment_without_category_id":
        del ann["segments_info"][0]["category_id"]
    elif kind == "unknown_category":
        ann["segments_info"][0]["category_id"] = 99
    else:
        raise ValueError(kind)


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("no_segments_info", "missing key 'segments_info'"),
        ("no_file_name", "missing key 'file_name'"),
        ("no_annotations", "missing key 'annotations'"),
        ("segment_without_category_id", "missing key 'category_id'"),
        ("unknown_category", "unknown category id 99 (not in the data set's metadata)"),
    ],
)
def test_key_errors_say_what_is_missing(layout_root, tmp_path, kind, expected):
    ann_path = layout_root / "annotations" / "panoptic_val.json"
    original = ann_path.read_text()
    data = json.loads(original)
    _break(data, kind)
    ann_path.write_text(json.dumps(data))
    name = register_custom_panoptic(f"loading_errors_{kind}", layout_root)[1]
    try:
        with pytest.raises(KeyError) as e:
            load_dataset_dicts([name])
    finally:
        ann_path.write_text(original)
        for split in ("train", "val"):
            DatasetCatalog.remove(f"loading_errors_{kind}_{split}")
            MetadataCatalog.remove(f"loading_errors_{kind}_{split}")
    msg = str(e.value)
    assert expected in msg and str(ann_path) in msg and name in msg, msg
    if kind != "unknown_category":
        assert "category id" not in msg
