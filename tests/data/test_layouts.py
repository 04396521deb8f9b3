"""Tests of the synthetic real-layout data sets: detectron2's builtin names and the plugin's
Mask2Former names read them from $DETECTRON2_DATASETS unchanged (in a fresh process, since
detectron2 reads the variable at import), ground truth scores PQ 100 against itself, the
instances JSON, semantic PNGs and Cityscapes label PNGs agree with the panoptic PNGs, the
custom set registers as a user's own, and writing is deterministic, cached and safe."""

import glob
import json
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from dataset_layouts import (
    CUSTOM_CATEGORIES,
    register_custom_panoptic,
    write_layout,
)
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

from detr_panoptic_d2.data.datasets import ADE20K_150_CATEGORIES, ADE20K_INSTANCE_CATEGORIES
from detr_panoptic_d2.data.scenes import THING_SHAPES

NUM_TRAIN, NUM_VAL = 4, 3
# Enough void strips and crowd regions to appear in a set of this size.
LAYOUT_ARGS = dict(seed=1, void_prob=0.5, crowd_prob=0.3)


@pytest.fixture(scope="module")
def d2root(tmp_path_factory):
    """A DETECTRON2_DATASETS folder holding the COCO, Cityscapes and ADE20K layouts."""
    root = tmp_path_factory.mktemp("d2_datasets")
    out = {}
    for layout in ("coco", "cityscapes", "ade20k"):
        args = dict(LAYOUT_ARGS)
        if layout == "ade20k":
            args["crowd_prob"] = 0.0
        out[layout] = write_layout(root, layout, NUM_TRAIN, NUM_VAL, **args)
    out["root"] = str(root)
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def _pan_ids(path):
    return rgb2id(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint32))


# ----------------------------------------------------------------- registrations, in a subprocess

_CHECK = r'''
import json, os, sys
import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from panopticapi.utils import rgb2id
from detectron2.data import DatasetCatalog, MetadataCatalog
import detectron2.data.datasets  # noqa: F401  builtin names, read from $DETECTRON2_DATASETS
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detr_panoptic_d2.data.datasets import register_plugin_datasets

names, out_dir = json.loads(sys.argv[1]), sys.argv[2]
report = {"plugin_registered": list(register_plugin_datasets(names))}


def panoptic_prediction(d, meta):
    """Ground truth as a model's panoptic output: ids 1..n, contiguous classes, isthing."""
    gt = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]), dtype=np.uint32))
    pan, infos = np.zeros(gt.shape, np.int32), []
    things = set(meta.thing_dataset_id_to_contiguous_id.values())
    for k, s in enumerate(d["segments_info"], 1):
        pan[gt == s["id"]] = k
        isthing = s.get("isthing", s["category_id"] in things)
        infos.append({"id": k, "category_id": s["category_id"], "isthing": bool(isthing)})
    return {"panoptic_seg": (torch.from_numpy(pan), infos)}


def semantic_prediction(d, num_classes):
    gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
    pred = torch.from_numpy(np.where(gt == 255, 0, gt))
    return {"sem_seg": torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()}


def instance_prediction(d):
    anns = [a for a in d["annotations"] if not a["iscrowd"]]
    h, w = d["height"], d["width"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in anns]
    inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))
    return {"instances": inst}


def evaluate(evaluator, dicts, make):
    evaluator.reset()
    for d in dicts:
        evaluator.process([{"file_name": d["file_name"], "image_id": d.get("image_id")}],
                          [make(d)])
    return evaluator.evaluate()


for name in names:
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    files = [d[k] for d in dicts for k in ("file_name", "pan_seg_file_name", "sem_seg_file_name")
             if k in d]
    classes = meta.stuff_classes if meta.get("stuff_classes") else meta.thing_classes
    r = {
        "count": len(dicts),
        "missing": [f for f in files if not os.path.isfile(f)],
        "keys": sorted(set().union(*(d.keys() for d in dicts))),
        "segment_categories": sorted({s["category_id"] for d in dicts
                                      for s in d.get("segments_info", [])}),
        "instance_categories": sorted({a["category_id"] for d in dicts
                                       for a in d.get("annotations", [])}),
        "num_classes": len(classes),
        "metadata": sorted(meta.as_dict()),
        "evaluator_type": meta.get("evaluator_type"),
        "image_ids": [d.get("image_id") for d in dicts],
    }
    out = os.path.join(out_dir, name)
    if "pan_seg_file_name" in r["keys"]:
        res = evaluate(COCOPanopticEvaluator(name, out), dicts,
                       lambda d: panoptic_prediction(d, meta))
        r["pq"] = res["panoptic_seg"]
    # SemSegEvaluator needs every class in stuff_dataset_id_to_contiguous_id, or no such map
    # (detectron2's Cityscapes panoptic metadata maps the stuff classes only).
    stuff_map = meta.get("stuff_dataset_id_to_contiguous_id")
    if "sem_seg_file_name" in r["keys"] and (
            stuff_map is None or len(stuff_map) == len(meta.stuff_classes)):
        res = evaluate(SemSegEvaluator(name, distributed=False, output_dir=out), dicts,
                       lambda d: semantic_prediction(d, len(meta.stuff_classes)))
        r["miou"] = res["sem_seg"]["mIoU"]
    if "annotations" in r["keys"] and "sem_seg_file_name" not in r["keys"]:
        ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=out)
        res = evaluate(ev, dicts, instance_prediction)
        r["ap"] = {task: res[task]["AP"] for task in ("bbox", "segm")}
    report[name] = r
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f)
'''


def _check_in_subprocess(root, names, tmp_path):
    env = {**os.environ, "DETECTRON2_DATASETS": root}
    script = tmp_path / "check.py"
    script.write_text(_CHECK)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(names), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _load(tmp_path / "report.json")


def test_builtin_and_plugin_names_read_the_layouts(d2root, tmp_path):
    coco, cs, ade = d2root["coco"], d2root["cityscapes"], d2root["ade20k"]
    names = [
        n
        for out in (coco, cs, ade)
        for kind in ("detectron2", "plugin")
        for n in out["dataset_names"][kind]
    ]
    report = _check_in_subprocess(d2root["root"], names, tmp_path)
    assert sorted(report["plugin_registered"]) == sorted(
        coco["dataset_names"]["plugin"] + ade["dataset_names"]["plugin"]
    )

    for name in names:
        r = report[name]
        split = "train" if "train" in name else "val"
        expected = (
            coco["val_100"]["num_images"]
            if "val_100" in name
            else NUM_TRAIN
            if split == "train"
            else NUM_VAL
        )
        assert r["count"] == expected, name
        assert r["missing"] == [], name
        # contiguous category ids, below the number of classes
        for key in ("segment_categories", "instance_categories"):
            assert all(0 <= c < r["num_classes"] for c in r[key]), (name, key)
        if "pq" in r:
            for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
                assert r["pq"][k] == pytest.approx(100.0), (name, k)
        if "miou" in r:
            assert r["miou"] == pytest.approx(100.0), name
        if "ap" in r:
            assert r["ap"] == {"bbox": pytest.approx(100.0), "segm": pytest.approx(100.0)}, name

    # every metric was computed where it applies
    assert {n for n in names if "pq" in report[n]} == {
        n for n in names if "pan_seg_file_name" in report[n]["keys"]
    }
    assert {n for n in names if "ap" in report[n]} == {
        "coco_2017_train",
        "coco_2017_val",
        "coco_2017_val_100",
    }
    assert {n for n in names if "miou" in report[n]} >= {
        "ade20k_sem_seg_val",
        "ade20k_panoptic_val",
        "coco_2017_val_panoptic_with_sem_seg",
        "coco_2017_val_panoptic_stuffonly",
        "cityscapes_fine_sem_seg_val",
    }

    pan_keys = ["file_name", "image_id", "pan_seg_file_name", "segments_info"]
    for name in (
        "coco_2017_train_panoptic",
        "coco_2017_val_panoptic",
        "coco_2017_val_100_panoptic",
    ):
        assert report[name]["keys"] == pan_keys and report[name]["num_classes"] == 133
        assert report[name]["evaluator_type"] == "coco_panoptic_seg"
    for name in (
        "coco_2017_train_panoptic_with_sem_seg",
        "coco_2017_val_panoptic_with_sem_seg",
        "cityscapes_fine_panoptic_train",
        "cityscapes_fine_panoptic_val",
        "ade20k_panoptic_train",
        "ade20k_panoptic_val",
    ):
        assert report[name]["keys"] == sorted(pan_keys + ["sem_seg_file_name"]), name
    for name in ("coco_2017_train_panoptic_with_sem_seg", "coco_2017_val_panoptic_with_sem_seg"):
        assert {"sem_seg_root", "panoptic_json", "json_file", "label_divisor"} <= set(
            report[name]["metadata"]
        )
    assert report["ade20k_panoptic_val"]["evaluator_type"] == "ade20k_panoptic_seg"
    assert report["ade20k_panoptic_val"]["num_classes"] == 150
    assert report["ade20k_panoptic_val"]["image_ids"][0] == "ADE_val_00000001"
    assert report["cityscapes_fine_panoptic_val"]["num_classes"] == 19
    assert re.fullmatch(
        r"[a-z]+_\d{6}_\d{6}", report["cityscapes_fine_panoptic_val"]["image_ids"][0]
    )
    assert report["coco_2017_val"]["keys"] == [
        "annotations",
        "file_name",
        "height",
        "image_id",
        "width",
    ]
    # the scenes' classes reach the loaders
    assert len(report["cityscapes_fine_panoptic_train"]["segment_categories"]) > 8
    assert len(report["coco_2017_train"]["instance_categories"]) > 1


# ----------------------------------------------------------------- coco files


def test_coco_files(d2root):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco = d2root["coco"]
    droot = coco["dataset_root"]
    assert droot == os.path.join(d2root["root"], "coco")
    for split in ("train", "val"):
        pan = _load(coco[split]["panoptic_json"])
        assert [
            (c["id"], c["name"], c["isthing"], list(c["color"])) for c in pan["categories"]
        ] == [(c["id"], c["name"], c["isthing"], list(c["color"])) for c in COCO_CATEGORIES]
        for im, ann in zip(pan["images"], pan["annotations"]):
            assert re.fullmatch(r"\d{12}\.jpg", im["file_name"])
            assert int(im["file_name"][:12]) == im["id"] == ann["image_id"]
            assert ann["file_name"] == im["file_name"][:12] + ".png"
            img = Image.open(os.path.join(coco[split]["image_root"], im["file_name"]))
            assert img.format == "JPEG" and img.size == (im["width"], im["height"])
        inst = _load(coco[split]["instances_json"])
        assert [(c["id"], c["name"]) for c in inst["categories"]] == [
            (c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]
        ]
    train_ids = {im["id"] for im in _load(coco["train"]["panoptic_json"])["images"]}
    val = _load(coco["val"]["panoptic_json"])
    assert not train_ids & {im["id"] for im in val["images"]}

    # val_100: the first min(100, num_val) val images, same annotations and PNGs
    val100 = _load(os.path.join(droot, "annotations", "panoptic_val2017_100.json"))
    n = coco["val_100"]["num_images"]
    assert n == min(100, NUM_VAL)
    assert val100["images"] == val["images"][:n]
    assert val100["annotations"] == val["annotations"][:n]
    for ann in val100["annotations"]:
        a = open(os.path.join(droot, "panoptic_val2017", ann["file_name"]), "rb").read()
        assert open(os.path.join(droot, "panoptic_val2017_100", ann["file_name"]), "rb").read() == a
    inst100 = _load(os.path.join(droot, "annotations", "instances_val2017_100.json"))
    assert {a["image_id"] for a in inst100["annotations"]} <= {im["id"] for im in val100["images"]}


def _segment_stats(layouts_json):
    """Whether the layout has void pixels, crowd segments and ids above 255."""
    void = crowd = large = False
    for pan_json, pan_root in layouts_json:
        for ann in _load(pan_json)["annotations"]:
            ids = _pan_ids(os.path.join(pan_root, ann["file_name"]))
            void |= bool((ids == 0).any())
            crowd |= any(s["iscrowd"] for s in ann["segments_info"])
            large |= any(s["id"] > 255 for s in ann["segments_info"])
    return void, crowd, large


def test_layouts_have_void_crowd_and_real_id_encodings(d2root):
    for layout, want_crowd in (("coco", True), ("cityscapes", True), ("ade20k", False)):
        out = d2root[layout]
        void, crowd, large = _segment_stats(
            [(out[s]["panoptic_json"], out[s]["panoptic_root"]) for s in ("train", "val")]
        )
        assert void and large, layout
        assert crowd == want_crowd, layout


def _instance_check(pan_json, pan_root, inst_json, isthing):
    """The instances JSON lists exactly the thing segments of the panoptic JSON, with the same
    category, crowd flag, box, area and mask."""
    api = COCO(inst_json)
    pan = _load(pan_json)
    assert sorted(api.getImgIds()) == sorted(im["id"] for im in pan["images"])
    count = 0
    for ann in pan["annotations"]:
        ids = _pan_ids(os.path.join(pan_root, ann["file_name"]))
        inst = api.loadAnns(api.getAnnIds(imgIds=[ann["image_id"]], iscrowd=None))
        things = [s for s in ann["segments_info"] if isthing[s["category_id"]]]
        assert len(inst) == len(things), ann["file_name"]
        for a in inst:
            mask = api.annToMask(a).astype(bool)
            matches = [s for s in things if np.array_equal(ids == s["id"], mask)]
            assert len(matches) == 1, (ann["file_name"], a["id"])
            s = matches[0]
            assert (a["category_id"], a["iscrowd"], a["bbox"], a["area"]) == (
                s["category_id"],
                s["iscrowd"],
                s["bbox"],
                s["area"],
            )
            if a["iscrowd"]:  # COCO keeps crowd regions as uncompressed RLE
                assert isinstance(a["segmentation"]["counts"], list)
            else:
                assert isinstance(a["segmentation"]["counts"], str)
                assert mask_util.area(a["segmentation"]) == s["area"]
            count += 1
    return count


def test_instances_json_agrees_with_panoptic(d2root):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco, ade = d2root["coco"], d2root["ade20k"]
    isthing = {c["id"]: c["isthing"] for c in COCO_CATEGORIES}
    n = sum(
        _instance_check(
            coco[s]["panoptic_json"], coco[s]["panoptic_root"], coco[s]["instances_json"], isthing
        )
        for s in ("train", "val")
    )
    droot = coco["dataset_root"]
    n100 = _instance_check(
        os.path.join(droot, "annotations", "panoptic_val2017_100.json"),
        os.path.join(droot, "panoptic_val2017_100"),
        os.path.join(droot, "annotations", "instances_val2017_100.json"),
        isthing,
    )
    assert n > 0 and n100 > 0
    isthing = {c["id"]: c["isthing"] for c in ADE20K_150_CATEGORIES}
    for s in ("train", "val"):
        assert (
            _instance_check(
                ade[s]["panoptic_json"], ade[s]["panoptic_root"], ade[s]["instances_json"], isthing
            )
            > 0
        )
        assert _load(ade[s]["instances_json"])["categories"] == ADE20K_INSTANCE_CATEGORIES


# ----------------------------------------------------------------- semantic PNGs


def _semantic_expected(pan_json, pan_root, label_of):
    """Per panoptic PNG: (file name, expected (H, W) semantic map), 255 where void."""
    for ann in _load(pan_json)["annotations"]:
        ids = _pan_ids(os.path.join(pan_root, ann["file_name"]))
        sem = np.full(ids.shape, 255, np.int64)
        for s in ann["segments_info"]:
            sem[ids == s["id"]] = label_of[s["category_id"]]
        yield ann["file_name"], sem


def _assert_semantic(sem_root, expected, name_of=lambda f: f):
    files = 0
    for file_name, sem in expected:
        got = np.asarray(Image.open(os.path.join(sem_root, name_of(file_name))))
        assert got.dtype == np.uint8 and np.array_equal(got, sem), (sem_root, file_name)
        files += 1
    assert files > 0 and files == len(os.listdir(sem_root)), sem_root


def test_semantic_pngs_agree_with_panoptic(d2root):
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, COCO_CATEGORIES

    droot = d2root["coco"]["dataset_root"]
    index = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}  # Mask2Former: 0..132
    stuff = [c["id"] for c in COCO_CATEGORIES if not c["isthing"]]
    separated = {c["id"]: 0 for c in COCO_CATEGORIES if c["isthing"]}  # detectron2: things 0
    separated.update({cid: i + 1 for i, cid in enumerate(stuff)})
    for s in ("train2017", "val2017", "val2017_100"):
        pan_json = os.path.join(droot, "annotations", f"panoptic_{s}.json")
        pan_root = os.path.join(droot, f"panoptic_{s}")
        if s != "val2017_100":
            _assert_semantic(
                os.path.join(droot, f"panoptic_semseg_{s}"),
                _semantic_expected(pan_json, pan_root, index),
            )
        _assert_semantic(
            os.path.join(droot, f"panoptic_stuff_{s}"),
            _semantic_expected(pan_json, pan_root, separated),
        )

    ade = d2root["ade20k"]
    ident = {c["id"]: c["id"] for c in ADE20K_150_CATEGORIES}  # ADE20K ids are 0..149
    for s in ("train", "val"):
        _assert_semantic(
            ade[s]["sem_seg_root"],
            _semantic_expected(ade[s]["panoptic_json"], ade[s]["panoptic_root"], ident),
        )
        raw_root = ade[s]["sem_seg_root"].replace("annotations_detectron2", "annotations")
        for f in os.listdir(raw_root):  # raw: class + 1, 0 for void
            raw = np.asarray(Image.open(os.path.join(raw_root, f))).astype(np.int64)
            d2 = np.asarray(Image.open(os.path.join(ade[s]["sem_seg_root"], f))).astype(np.int64)
            assert np.array_equal(np.where(raw == 0, 255, raw - 1), d2), f

    cs = d2root["cityscapes"]
    train_id = {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES}
    for s in ("train", "val"):
        for file_name, sem in _semantic_expected(
            cs[s]["panoptic_json"], cs[s]["panoptic_root"], train_id
        ):
            city = file_name.split("_")[0]
            gt = os.path.join(cs[s]["gt_root"], city, file_name.replace("_panoptic.png", "_"))
            assert np.array_equal(np.asarray(Image.open(gt + "labelTrainIds.png")), sem)
            inst = np.asarray(Image.open(gt + "instanceIds.png")).astype(np.int64)
            labels = np.asarray(Image.open(gt + "labelIds.png")).astype(np.int64)
            assert np.array_equal(np.where(inst < 1000, inst, inst // 1000), labels)
            pan = _pan_ids(os.path.join(cs[s]["panoptic_root"], file_name))
            # panoptic ids are the instanceIds values, void where the label is not evaluated
            assert np.array_equal(pan, np.where(np.isin(labels, list(train_id)), inst, 0))
            polygons = _load(gt + "polygons.json")
            assert (polygons["imgHeight"], polygons["imgWidth"]) == pan.shape


# ----------------------------------------------------------------- names, ids, classes


def test_cityscapes_files(d2root):
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

    cs = d2root["cityscapes"]
    for split in ("train", "val"):
        cities = sorted(os.listdir(cs[split]["image_root"]))
        assert len(cities) >= 2
        for city in cities:
            for f in os.listdir(os.path.join(cs[split]["image_root"], city)):
                assert re.fullmatch(rf"{city}_\d{{6}}_\d{{6}}_leftImg8bit\.png", f)
        pan = _load(cs[split]["panoptic_json"])
        assert [
            (c["id"], c["name"], c["isthing"], tuple(c["color"])) for c in pan["categories"]
        ] == [(c["id"], c["name"], c["isthing"], tuple(c["color"])) for c in CITYSCAPES_CATEGORIES]
        isthing = {c["id"]: c["isthing"] for c in CITYSCAPES_CATEGORIES}
        for ann in pan["annotations"]:
            assert ann["file_name"] == ann["image_id"] + "_gtFine_panoptic.png"
            for s in ann["segments_info"]:
                if isthing[s["category_id"]] and not s["iscrowd"]:
                    assert s["id"] // 1000 == s["category_id"]
                else:  # stuff, and crowd regions of a thing class
                    assert s["id"] == s["category_id"]
                    assert s["iscrowd"] == isthing[s["category_id"]]


def test_ade20k_files(d2root):
    ade = d2root["ade20k"]
    for split, folder in (("train", "training"), ("val", "validation")):
        files = sorted(os.listdir(ade[split]["image_root"]))
        assert files == [f"ADE_{split}_{i:08d}.jpg" for i in range(1, len(files) + 1)]
        assert ade[split]["image_root"].endswith(os.path.join("images", folder))
        pan = _load(ade[split]["panoptic_json"])
        assert [(c["id"], c["name"], c["isthing"]) for c in pan["categories"]] == [
            (c["id"], c["name"], c["isthing"]) for c in ADE20K_150_CATEGORIES
        ]
        assert [im["id"] for im in pan["images"]] == [f[:-4] for f in files]


def test_scene_classes_one_per_shape(d2root):
    """Each layout draws at most as many thing classes as there are shapes."""
    for layout in ("coco", "cityscapes", "ade20k"):
        out = d2root[layout]
        pan = _load(out["train"]["panoptic_json"])
        isthing = {c["id"]: c["isthing"] for c in pan["categories"]}
        used = {
            s["category_id"]
            for s in (
                s
                for split in ("train", "val")
                for a in _load(out[split]["panoptic_json"])["annotations"]
                for s in a["segments_info"]
            )
            if isthing[s["category_id"]]
        }
        assert 0 < len(used) <= len(THING_SHAPES), layout


# ----------------------------------------------------------------- custom


def test_custom_set_registers_as_a_users_own(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOPanopticEvaluator

    out = write_layout(tmp_path / "warehouse", "custom", 5, 4)
    assert out["dataset_root"] == str(tmp_path / "warehouse")
    pan = _load(out["val"]["panoptic_json"])
    assert pan["categories"] == CUSTOM_CATEGORIES
    isthing = {c["id"]: c["isthing"] for c in CUSTOM_CATEGORIES}
    assert (
        _instance_check(
            out["train"]["panoptic_json"],
            out["train"]["panoptic_root"],
            out["train"]["instances_json"],
            isthing,
        )
        > 0
    )

    prefix = f"custom_{uuid.uuid4().hex[:8]}"
    train, val = register_custom_panoptic(prefix, out["dataset_root"])
    assert register_custom_panoptic(prefix, out["dataset_root"]) == (train, val)
    assert len(DatasetCatalog.get(train)) == 5
    dicts = DatasetCatalog.get(val)
    meta = MetadataCatalog.get(val)
    assert len(dicts) == 4 and meta.json_file == out["val"]["instances_json"]
    contiguous = {c["id"]: i for i, c in enumerate(CUSTOM_CATEGORIES)}
    things = {contiguous[c["id"]] for c in CUSTOM_CATEGORIES if c["isthing"]}
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"])
        for s in d["segments_info"]:
            assert 0 <= s["category_id"] < len(CUSTOM_CATEGORIES)
            assert s["isthing"] == (s["category_id"] in things)

    ev = COCOPanopticEvaluator(val, str(tmp_path / "eval"))
    ev.reset()
    for d in dicts:
        gt = _pan_ids(d["pan_seg_file_name"])
        infos = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in d["segments_info"]
        ]
        ev.process(
            [{"file_name": d["file_name"], "image_id": d["image_id"]}],
            [{"panoptic_seg": (torch.from_numpy(gt.astype(np.int32)), infos)}],
        )
    assert ev.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)


# ----------------------------------------------------------------- determinism, cache, safety


def _tree(root):
    return {
        os.path.relpath(p, root): open(p, "rb").read()
        for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        + glob.glob(os.path.join(root, "**", ".*"), recursive=True)
        if os.path.isfile(p)
    }


@pytest.mark.parametrize("layout", ["coco", "cityscapes", "ade20k", "custom"])
def test_deterministic_and_cached(tmp_path, layout):
    a = write_layout(tmp_path / "a", layout, 2, 2, seed=4)
    b = write_layout(tmp_path / "b", layout, 2, 2, seed=4)
    tree_a, tree_b = _tree(a["dataset_root"]), _tree(b["dataset_root"])
    assert tree_a == tree_b and len(tree_a) > 10
    mtimes = {p: os.stat(os.path.join(a["dataset_root"], p)).st_mtime_ns for p in tree_a}
    again = write_layout(tmp_path / "a", layout, 2, 2, seed=4)
    assert again["generated"] is False
    assert {k: v for k, v in again.items() if k != "generated"} == {
        k: v for k, v in a.items() if k != "generated"
    }
    assert {p: os.stat(os.path.join(a["dataset_root"], p)).st_mtime_ns for p in tree_a} == mtimes
    other = write_layout(tmp_path / "a", layout, 2, 2, seed=5)
    assert other["generated"] is True and _tree(a["dataset_root"]) != tree_a
    assert write_layout(tmp_path / "a", layout, 2, 2, seed=5, overwrite=True)["generated"]


def test_never_writes_into_a_foreign_folder(tmp_path):
    real = tmp_path / "coco" / "annotations"
    real.mkdir(parents=True)
    (real / "panoptic_val2017.json").write_text("{}")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "coco"))):
        write_layout(tmp_path, "coco", 2, 2)
    assert (real / "panoptic_val2017.json").read_text() == "{}"
    assert os.listdir(tmp_path / "coco") == ["annotations"]
    # an interrupted write (marker not complete) is redone
    out = write_layout(tmp_path / "d2", "ade20k", 2, 2)
    marker = os.path.join(out["dataset_root"], ".detr_panoptic_d2_layout.json")
    data = _load(marker)
    data["complete"] = False
    with open(marker, "w") as f:
        json.dump(data, f)
    assert write_layout(tmp_path / "d2", "ade20k", 2, 2)["generated"] is True


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"layout": "lvis"}, "layout"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": 1.5}, "num_val"),
        ({"image_size": (16, 64)}, "image_size"),
        ({"thing_colors": "rainbow"}, "thing_colors"),
        ({"void_prob": 2}, "void_prob"),
        ({"crowd_prob": -0.1}, "crowd_prob"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    args = {"layout": "coco", "num_train": 2, "num_val": 2, **kwargs}
    with pytest.raises(ValueError, match=word):
        write_layout(tmp_path, **args)
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------- tools/generate_toy_dataset.py


def _tool():
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(repo, "tools", "generate_toy_dataset.py")
    spec = importlib.util.spec_from_file_location("_generate_toy_dataset_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_tool_layouts(tmp_path, capsys):
    tool = _tool()
    tool.main(["--layout", "ade20k", "--root", str(tmp_path), "--num-train", "2", "--num-val", "1"])
    out = capsys.readouterr().out
    assert os.path.join(str(tmp_path), "ADEChallengeData2016") in out
    assert f"DETECTRON2_DATASETS={tmp_path}" in out and "ade20k_panoptic_val" in out
    marker = _load(tmp_path / "ADEChallengeData2016" / ".detr_panoptic_d2_layout.json")
    assert marker["args"]["thing_colors"] == "random" and marker["args"]["num_val"] == 1

    tool.main(
        [
            "--root",
            str(tmp_path / "toy"),
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--thing-colors",
            "random",
        ]
    )
    assert "toy_panoptic_val" in capsys.readouterr().out
    assert _load(tmp_path / "toy" / "meta.json")["thing_colors"] == "random"
    with pytest.raises(SystemExit):
        tool.main(["--layout", "coco", "--root", str(tmp_path), "--thing-colors", "rainbow"])
