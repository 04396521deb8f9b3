"""Tests of the registrations the plugin offers (ADE20K panoptic and COCO panoptic with semantic
labels, as Mask2Former registers them): idempotence, names registered elsewhere left alone,
nothing registered on import, metadata, loaders and the panoptic -> semantic converter."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detr_panoptic_d2.data.datasets import (
    ADE20K_150_CATEGORIES,
    ADE20K_INSTANCE_CATEGORIES,
    PLUGIN_DATASET_NAMES,
    get_ade20k_panoptic_metadata,
    get_coco_panoptic_with_sem_seg_metadata,
    load_ade20k_panoptic_json,
    prepare_coco_panoptic_semseg,
    register_plugin_datasets,
    semantic_from_panoptic,
    write_semantic_from_panoptic,
)

ADE = ("ade20k_panoptic_train", "ade20k_panoptic_val")
COCO = ("coco_2017_train_panoptic_with_sem_seg", "coco_2017_val_panoptic_with_sem_seg")


@pytest.fixture
def catalogs():
    """The plugin names unregistered for the test, and restored to their previous state after."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    saved = {}
    for name in PLUGIN_DATASET_NAMES:
        if name in DatasetCatalog.list():
            saved[name] = (DatasetCatalog[name], MetadataCatalog.get(name).as_dict())
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    yield DatasetCatalog, MetadataCatalog
    for name in PLUGIN_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    for name, (func, meta) in saved.items():
        DatasetCatalog.register(name, func)
        MetadataCatalog.get(name).set(**{k: v for k, v in meta.items() if k != "name"})


def test_register_twice_and_unknown_names(catalogs, tmp_path):
    DatasetCatalog, MetadataCatalog = catalogs
    names = list(PLUGIN_DATASET_NAMES) + ["my_own_set", "coco_2017_val_panoptic"]
    assert set(register_plugin_datasets(names, root=tmp_path)) == set(PLUGIN_DATASET_NAMES)
    assert register_plugin_datasets(names, root=tmp_path) == ()  # harmless the second time
    assert "my_own_set" not in DatasetCatalog.list()
    assert register_plugin_datasets("my_own_set") == ()

    meta = MetadataCatalog.get("ade20k_panoptic_val")
    root = str(tmp_path)
    assert meta.image_root == os.path.join(root, "ADEChallengeData2016/images/validation")
    assert meta.panoptic_root == os.path.join(root, "ADEChallengeData2016/ade20k_panoptic_val")
    assert meta.panoptic_json == os.path.join(root, "ADEChallengeData2016/ade20k_panoptic_val.json")
    assert meta.json_file == os.path.join(root, "ADEChallengeData2016/ade20k_instance_val.json")
    assert (meta.evaluator_type, meta.ignore_label, meta.label_divisor) == (
        "ade20k_panoptic_seg",
        255,
        1000,
    )
    meta = MetadataCatalog.get("coco_2017_train_panoptic_with_sem_seg")
    assert meta.sem_seg_root == os.path.join(root, "coco/panoptic_semseg_train2017")
    assert meta.image_root == os.path.join(root, "coco/train2017")
    assert meta.json_file == os.path.join(root, "coco/annotations/instances_train2017.json")
    assert (meta.evaluator_type, meta.ignore_label, meta.label_divisor) == (
        "coco_panoptic_seg",
        255,
        1000,
    )


def test_names_registered_elsewhere_are_left_alone(catalogs, tmp_path):
    DatasetCatalog, MetadataCatalog = catalogs
    # as if mask2former had registered this one already
    DatasetCatalog.register("ade20k_panoptic_val", lambda: ["registered by mask2former"])
    MetadataCatalog.get("ade20k_panoptic_val").set(
        evaluator_type="ade20k_panoptic_seg", image_root="/elsewhere"
    )
    # and metadata set by someone for a name nobody registered, with another panoptic_json
    MetadataCatalog.get(COCO[0]).set(panoptic_json="/elsewhere/panoptic.json")
    assert register_plugin_datasets(PLUGIN_DATASET_NAMES, root=tmp_path) == (ADE[0], COCO[1])
    assert DatasetCatalog.get("ade20k_panoptic_val") == ["registered by mask2former"]
    assert MetadataCatalog.get("ade20k_panoptic_val").image_root == "/elsewhere"
    assert COCO[0] not in DatasetCatalog.list()


def test_root_defaults_to_detectron2s(catalogs, tmp_path, monkeypatch):
    DatasetCatalog, MetadataCatalog = catalogs
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_plugin_datasets([ADE[1]])
    assert MetadataCatalog.get(ADE[1]).image_root.startswith(str(tmp_path) + os.sep)
    DatasetCatalog.remove(ADE[1])
    MetadataCatalog.remove(ADE[1])
    monkeypatch.delenv("DETECTRON2_DATASETS")
    register_plugin_datasets([ADE[1]])
    assert MetadataCatalog.get(ADE[1]).image_root == os.path.join(
        "datasets", "ADEChallengeData2016", "images", "validation"
    )


def test_import_registers_nothing():
    code = (
        "import json, detr_panoptic_d2, detr_panoptic_d2.data.datasets, "
        "dataset_layouts\n"
        "from detectron2.data import DatasetCatalog\n"
        "from detr_panoptic_d2.data.datasets import PLUGIN_DATASET_NAMES\n"
        "print(json.dumps([n for n in PLUGIN_DATASET_NAMES if n in DatasetCatalog.list()]))\n"
    )
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "tools")
    env = dict(os.environ, PYTHONPATH=tools)  # dataset_layouts.py, the tests' layout writers
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_ade20k_categories_and_metadata():
    ids = [c["id"] for c in ADE20K_150_CATEGORIES]
    assert ids == list(range(150))
    assert len({c["name"] for c in ADE20K_150_CATEGORIES}) == 150
    things = [c["id"] for c in ADE20K_150_CATEGORIES if c["isthing"]]
    assert len(things) == 100 and [c["id"] for c in ADE20K_INSTANCE_CATEGORIES] == things
    assert ADE20K_150_CATEGORIES[8]["name"] == "window "  # the scene-parsing name, verbatim
    meta = get_ade20k_panoptic_metadata()
    assert len(meta["thing_classes"]) == 100 and len(meta["stuff_classes"]) == 150
    assert meta["thing_dataset_id_to_contiguous_id"] == {i: i for i in things}
    assert meta["stuff_dataset_id_to_contiguous_id"] == {i: i for i in ids}
    assert len(meta["thing_colors"]) == 100 and len(meta["stuff_colors"]) == 150


def test_coco_with_sem_seg_metadata():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    meta = get_coco_panoptic_with_sem_seg_metadata()
    assert meta["thing_classes"] == [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    assert meta["stuff_classes"] == [c["name"] for c in COCO_CATEGORIES]
    assert meta["stuff_dataset_id_to_contiguous_id"] == {
        c["id"]: i for i, c in enumerate(COCO_CATEGORIES)
    }
    assert meta["thing_dataset_id_to_contiguous_id"] == {
        c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]
    }


def _write_panoptic(root, segments, ids):
    """A one-image COCO panoptic set: (H, W) ids, its segments; returns the JSON path."""
    from panopticapi.utils import id2rgb

    os.makedirs(os.path.join(root, "pan"), exist_ok=True)
    Image.fromarray(id2rgb(ids)).save(os.path.join(root, "pan", "000000000139.png"))
    data = {
        "images": [{"id": 139, "file_name": "000000000139.jpg"}],
        "annotations": [
            {"image_id": 139, "file_name": "000000000139.png", "segments_info": segments}
        ],
    }
    path = os.path.join(root, "panoptic.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_semantic_from_panoptic(tmp_path):
    cats = [
        {"id": 1, "isthing": 1},
        {"id": 7, "isthing": 0},
        {"id": 3, "isthing": 1},
        {"id": 9, "isthing": 0},
    ]
    ids = np.zeros((4, 5), np.int64)
    ids[0] = 70000
    ids[1] = 12
    ids[2, :3] = 5
    segments = [
        {"id": 70000, "category_id": 9},
        {"id": 12, "category_id": 3},
        {"id": 5, "category_id": 7},
    ]
    want = np.full((4, 5), 255, np.uint8)
    want[0], want[1], want[2, :3] = 3, 2, 1  # index of the category in ``cats``
    assert np.array_equal(semantic_from_panoptic(ids, segments, {1: 0, 7: 1, 3: 2, 9: 3}), want)

    pan_json = _write_panoptic(str(tmp_path), segments, ids)
    assert write_semantic_from_panoptic(pan_json, tmp_path / "pan", tmp_path / "sem", cats) == 1
    got = np.asarray(Image.open(tmp_path / "sem" / "000000000139.png"))
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    # detectron2's "separated" labels: things 0, stuff 1, 2, ... in category order
    write_semantic_from_panoptic(
        pan_json, tmp_path / "pan", tmp_path / "stuff", cats, things_as_zero=True
    )
    want_sep = np.full((4, 5), 255, np.uint8)
    want_sep[0], want_sep[1], want_sep[2, :3] = 2, 0, 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "stuff" / "000000000139.png")), want_sep)

    with pytest.raises(KeyError, match="panoptic.json"):
        write_semantic_from_panoptic(pan_json, tmp_path / "pan", tmp_path / "x", cats[:2])
    many = [{"id": i, "isthing": 0} for i in range(300)]
    with pytest.raises(ValueError, match="300 categories"):
        write_semantic_from_panoptic(pan_json, tmp_path / "pan", tmp_path / "x", many)


def test_prepare_coco_panoptic_semseg(tmp_path, monkeypatch):
    from dataset_layouts import write_layout
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    out = write_layout(tmp_path, "coco", 3, 2)
    sem_root = os.path.join(out["dataset_root"], "panoptic_semseg_val2017")
    written = {f: open(os.path.join(sem_root, f), "rb").read() for f in os.listdir(sem_root)}
    for split in ("train2017", "val2017"):
        for f in os.listdir(os.path.join(out["dataset_root"], f"panoptic_semseg_{split}")):
            os.remove(os.path.join(out["dataset_root"], f"panoptic_semseg_{split}", f))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert prepare_coco_panoptic_semseg() == {
        s: os.path.join(out["dataset_root"], f"panoptic_semseg_{s}")
        for s in ("val2017", "train2017")
    }
    assert {
        f: open(os.path.join(sem_root, f), "rb").read() for f in os.listdir(sem_root)
    } == written
    index = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}
    for ann in json.load(open(out["val"]["panoptic_json"]))["annotations"]:
        sem = np.asarray(Image.open(os.path.join(sem_root, ann["file_name"])))
        assert {index[s["category_id"]] for s in ann["segments_info"]} <= set(np.unique(sem))
    with pytest.raises(FileNotFoundError, match="panoptic_test2017.json"):
        prepare_coco_panoptic_semseg(tmp_path, splits=("test2017",))


def test_ade20k_loader_names_unknown_categories(tmp_path):
    data = {
        "images": [],
        "annotations": [
            {
                "image_id": "ADE_val_00000001",
                "file_name": "ADE_val_00000001.png",
                "segments_info": [{"id": 5, "category_id": 151}],
            }
        ],
    }
    path = tmp_path / "ade20k_panoptic_val.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KeyError, match="ade20k_panoptic_val.json"):
        load_ade20k_panoptic_json(str(path), "img", "pan", "sem", get_ade20k_panoptic_metadata())
    data["annotations"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="ade20k_panoptic_val.json"):
        load_ade20k_panoptic_json(str(path), "img", "pan", "sem", get_ade20k_panoptic_metadata())
