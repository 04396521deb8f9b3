"""Evaluators: instance AP over the thing classes of a panoptic model (non-contiguous thing ids,
stuff predictions dropped, per-category names from the JSON, ground truth written from the panoptic
PNGs when no instances JSON is registered), and which evaluators each kind of registration gets."""

import json

import numpy as np
import pytest
import torch
from dataset_layouts import CUSTOM_CATEGORIES, register_custom_panoptic, write_layout
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.logger import setup_logger
from detr_test_utils import tiny_cfg
from panopticapi.utils import rgb2id
from PIL import Image

from detr_panoptic_d2.engine import (
    DetrInstanceEvaluator,
    DetrPanopticEvaluator,
    build_detr_evaluator,
    instances_json_from_panoptic,
)

setup_logger(name="detectron2")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("warehouse")
    write_layout(root, "custom", num_train=2, num_val=4, image_size=(96, 128))
    return register_custom_panoptic("eval_warehouse", root)[1]


def _ground_truth_outputs(name, stuff_too=False):
    """(inputs, outputs) as a perfect model would give them: every thing segment of the ground truth
    as an instance, with its box, mask and contiguous class; plus, with stuff_too, each stuff
    segment as well."""
    is_thing = set(MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id.values())
    pairs = []
    for record in DatasetCatalog.get(name):
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        segs = [s for s in record["segments_info"] if not s.get("iscrowd", 0)]
        segs = [s for s in segs if stuff_too or s["category_id"] in is_thing]
        masks = (
            torch.from_numpy(np.stack([ids == s["id"] for s in segs]))
            if segs
            else torch.zeros(0, *ids.shape)
        )
        inst = Instances(ids.shape)
        inst.pred_masks = masks.bool()
        inst.pred_boxes = BitMasks(masks).get_bounding_boxes() if segs else Boxes(torch.zeros(0, 4))
        inst.scores = torch.ones(len(segs))
        inst.pred_classes = torch.tensor([s["category_id"] for s in segs], dtype=torch.long)
        pairs.append(
            (
                {"image_id": record["image_id"], "file_name": record["file_name"]},
                {"instances": inst},
            )
        )
    return pairs


def _evaluate(evaluator, pairs):
    evaluator.reset()
    for inputs, outputs in pairs:
        evaluator.process([inputs], [outputs])
    return evaluator.evaluate()


@pytest.mark.parametrize("stuff_too", [False, True])
def test_perfect_things_give_ap_100_with_noncontiguous_thing_ids(warehouse, tmp_path, stuff_too):
    meta = MetadataCatalog.get(warehouse)
    thing_ids = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    assert thing_ids != list(
        range(len(thing_ids))
    )  # things scattered among the classes, as in ADE20K
    evaluator = DetrInstanceEvaluator(warehouse, ("bbox", "segm"), str(tmp_path))
    results = _evaluate(evaluator, _ground_truth_outputs(warehouse, stuff_too))
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0), results[task]
        per_category = {k[3:] for k in results[task] if k.startswith("AP-")}
        present = {c["name"] for c in CUSTOM_CATEGORIES if c["isthing"]}
        assert (
            per_category == present
        )  # named after the JSON's categories; no stuff class in the table


def test_ground_truth_from_panoptic_when_no_instances_json(warehouse, tmp_path):
    """A set registered without instances JSON (json_file None): the evaluator writes one from the
    PNGs."""
    from detectron2.data.datasets import register_coco_panoptic

    meta = MetadataCatalog.get(warehouse)
    name = "eval_warehouse_no_instances"
    if name not in DatasetCatalog.list():
        keys = ("thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id",
                "stuff_dataset_id_to_contiguous_id")  # fmt: skip
        register_coco_panoptic(name, {k: meta.get(k) for k in keys}, meta.image_root,
                               meta.panoptic_root, meta.panoptic_json)  # fmt: skip
    assert MetadataCatalog.get(name).json_file is None
    results = _evaluate(DetrInstanceEvaluator(name, ("bbox", "segm"), str(tmp_path)),
                        _ground_truth_outputs(name))  # fmt: skip
    assert results["bbox"]["AP"] == pytest.approx(100.0) and results["segm"]["AP"] == pytest.approx(
        100.0
    )
    written = json.load(open(tmp_path / f"{name}_instances_from_panoptic.json"))
    registered = json.load(open(meta.json_file))  # the layout's own instances JSON
    assert len(written["annotations"]) == len(registered["annotations"])
    assert sorted(c["id"] for c in written["categories"]) == sorted(
        c["id"] for c in registered["categories"]
    )
    for a, b in zip(
        sorted(written["annotations"], key=lambda a: (str(a["image_id"]), a["bbox"])),
        sorted(registered["annotations"], key=lambda a: (str(a["image_id"]), a["bbox"])),
    ):
        assert (a["category_id"], a["area"], a["iscrowd"]) == (
            b["category_id"],
            b["area"],
            b["iscrowd"],
        )
        np.testing.assert_allclose(a["bbox"], b["bbox"])


def test_instances_json_from_panoptic_names_and_ids(warehouse, tmp_path):
    path = instances_json_from_panoptic(warehouse, str(tmp_path / "x.json"))
    data = json.load(open(path))
    assert {c["id"]: c["name"] for c in data["categories"]} == {
        c["id"]: c["name"] for c in CUSTOM_CATEGORIES if c["isthing"]
    }
    assert len(data["images"]) == 4 and all(a["area"] > 0 for a in data["annotations"])


def _kinds(cfg, name, tmp_path):
    return [type(e) for e in build_detr_evaluator(cfg, name, str(tmp_path))._evaluators]


def test_evaluators_per_registration(warehouse, tmp_path):
    stage2 = tiny_cfg(mask_head=True, **{"MODEL.DETR.NUM_CLASSES": 9})
    assert _kinds(stage2, warehouse, tmp_path) == [DetrPanopticEvaluator, DetrInstanceEvaluator]
    stage1 = tiny_cfg(**{"MODEL.DETR.NUM_CLASSES": 9})
    assert _kinds(stage1, warehouse, tmp_path) == [DetrInstanceEvaluator]  # box AP of stage 1
    # semantic output on a set without semantic ground truth: no mIoU (a warning), the rest stays
    semantic = tiny_cfg(
        mask_head=True, **{"MODEL.DETR.NUM_CLASSES": 9, "MODEL.DETR.TEST.SEMANTIC_ON": True}
    )
    assert SemSegEvaluator not in _kinds(semantic, warehouse, tmp_path)
    # nothing applies: a set without annotations metadata
    MetadataCatalog.get("eval_bare_set_for_test").set(evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="eval_bare_set_for_test"):
        build_detr_evaluator(stage2, "eval_bare_set_for_test", str(tmp_path))


# ---- panoptic ground truth that does not match its PNGs ----------------------------------------
def _perfect_panoptic(name):
    """(inputs, outputs) of a model that predicts the ground truth's non-crowd segments."""
    is_thing = set(MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id.values())
    pairs = []
    for record in DatasetCatalog.get(name):
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        present = set(np.unique(ids).tolist())
        segs = [s for s in record["segments_info"] if not s.get("iscrowd", 0)]
        segs = [s for s in segs if s["id"] in present]
        kept = np.isin(ids, [s["id"] for s in segs])
        info = [
            {
                "id": s["id"],
                "category_id": s["category_id"],
                "isthing": s["category_id"] in is_thing,
            }
            for s in segs
        ]
        output = {"panoptic_seg": (torch.from_numpy(np.where(kept, ids, 0)), info)}
        pairs.append(({"image_id": record["image_id"], "file_name": record["file_name"]}, output))
    return pairs


@pytest.fixture
def edited_copy(warehouse, tmp_path):
    """``edit(fn)`` → (name, PNG path, segment id): ``warehouse`` registered afresh with a copy of
    its panoptic JSON in which ``fn(annotation)`` changed the second image's annotation."""
    from detectron2.data.datasets import register_coco_panoptic

    meta = MetadataCatalog.get(warehouse)
    names = []

    def edit(fn):
        data = json.load(open(meta.panoptic_json))
        annotation = data["annotations"][1]
        segment_id = fn(annotation)
        path = tmp_path / f"panoptic_edited_{len(names)}.json"
        path.write_text(json.dumps(data))
        name = f"eval_warehouse_edited_{tmp_path.name}_{len(names)}"
        keys = ("thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id",
                "stuff_dataset_id_to_contiguous_id")  # fmt: skip
        register_coco_panoptic(name, {k: meta.get(k) for k in keys}, meta.image_root,
                               meta.panoptic_root, str(path))  # fmt: skip
        names.append(name)
        return name, f"{meta.panoptic_root}/{annotation['file_name']}", segment_id

    yield edit
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_clean_ground_truth_gives_the_pq_of_detectron2s_evaluator(warehouse, tmp_path):
    pairs = _perfect_panoptic(warehouse)
    ours = _evaluate(DetrPanopticEvaluator(warehouse, str(tmp_path / "ours")), pairs)
    theirs = _evaluate(COCOPanopticEvaluator(warehouse, str(tmp_path / "d2")), pairs)
    assert ours == theirs
    assert ours["panoptic_seg"]["PQ"] == pytest.approx(100.0)


def _drop_segment(annotation):
    return annotation["segments_info"].pop(0)["id"]  # its pixels stay in the PNG


def _add_absent_segment(annotation):
    segments = annotation["segments_info"]
    segments.append({**segments[0], "id": 7777777})  # in no PNG
    return 7777777


@pytest.mark.parametrize(
    "edit, says, d2_pq_is_100",
    [
        (_drop_segment, "not listed in segments_info", True),  # its pixels are skipped
        (_add_absent_segment, "absent from it", False),  # a segment no model can find
    ],
)
def test_ground_truth_ids_that_do_not_match_are_an_error(
    edited_copy, tmp_path, edit, says, d2_pq_is_100
):
    name, png, segment_id = edited_copy(edit)
    pairs = _perfect_panoptic(name)
    # Detectron2's evaluator reports a PQ from this ground truth without a word
    pq = _evaluate(COCOPanopticEvaluator(name, str(tmp_path / "d2")), pairs)["panoptic_seg"]["PQ"]
    assert (pq == pytest.approx(100.0)) == d2_pq_is_100, pq
    with pytest.raises(ValueError) as e:
        _evaluate(DetrPanopticEvaluator(name, str(tmp_path / "ours")), pairs)
    msg = str(e.value)
    assert png in msg and str(segment_id) in msg and says in msg, msg
    assert name in msg and msg.count("Panoptic PNG") == 1  # the other images are clean
