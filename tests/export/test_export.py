"""Exported TorchScript / ONNX graphs against the eager model: outputs on images of several sizes
and aspect ratios, the panoptic results and PQ on the toy val set (both merges), deploy.json, ONNX
checks."""

import copy
import json
import os

import numpy as np
import onnx
import pytest
import torch
from _export_helpers import export_cfg, segment_model

from detr_panoptic_d2.export import ONNX_OPSET, export_model
from detr_panoptic_runtime import ExportedPanopticModel, select_queries

SIZES = [(64, 85), (85, 64), (40, 120), (96, 96), (33, 47), (130, 57)]
TOL = {"logits": 1e-4, "boxes": 1e-4, "masks": 1e-3}


def eager_graph_outputs(model, image, mask_queries="kept", input_format="RGB"):
    """What the exported graph computes, with the eager modules: logits, boxes, masks, mask
    queries."""
    with torch.no_grad():
        x = image.float().flip(0) if input_format == "BGR" else image.float()
        x = ((x - model.pixel_mean) / model.pixel_std)[None]
        outputs, features = model.detr(x, torch.zeros_like(x[:, 0], dtype=torch.bool))
        logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
        if mask_queries == "all":
            q = torch.arange(logits.shape[0])
        else:
            q = select_queries(logits, model.postprocessor.object_mask_threshold)[0].nonzero()[:, 0]
        return logits, boxes, model.mask_head(features, torch.zeros_like(q), q), q


def as_torch(outputs):
    return [o.cpu() if isinstance(o, torch.Tensor) else torch.from_numpy(o) for o in outputs]


def random_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("key", ["ts", "onnx", "onnx_all"])
def test_graph_matches_eager_on_several_sizes(exported, key):
    model = exported["model"]
    runner = ExportedPanopticModel(exported[key])
    mode = runner.meta["mask_queries"]
    kept_counts = []
    for i, (h, w) in enumerate(SIZES):
        image = random_image(h, w, i)
        logits, boxes, masks, q = as_torch(runner.run_graph(image.numpy()))
        ref_logits, ref_boxes, ref_masks, ref_q = eager_graph_outputs(model, image, mode)
        assert torch.equal(q, ref_q), (h, w)
        assert masks.shape == ref_masks.shape == (len(ref_q), (h + 3) // 4, (w + 3) // 4)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=TOL["logits"])
        torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=TOL["boxes"])
        torch.testing.assert_close(masks, ref_masks, rtol=0, atol=TOL["masks"])
        kept_counts.append(len(q))
    assert max(kept_counts) > 0  # the mask head ran


def test_onnx_model_checks(exported):
    for key, mode in (("onnx", "kept"), ("onnx_all", "all")):
        proto = onnx.load(os.path.join(exported[key], "model.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [
            ONNX_OPSET
        ]
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == [3, "height", "width"]
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        ops = {n.op_type for n in proto.graph.node}
        # "all": fixed-size, nothing data-dependent (TensorRT); "kept": NonZero selects the mask
        # queries
        assert ("NonZero" in ops) == (mode == "kept")
        meta = json.load(open(os.path.join(exported[key], "deploy.json")))
        assert meta["onnx_opset"] == ONNX_OPSET and meta["mask_queries"] == mode


def test_deploy_json(exported):
    cfg = exported["cfg"]
    meta = json.load(open(os.path.join(exported["ts"], "deploy.json")))
    assert meta["format"] == "torchscript" and meta["model_file"] == "model.ts"
    assert meta["class_names"] == [
        "circle",
        "square",
        "triangle",
        "bar",
        "cross",
        "sky",
        "water",
        "ground",
    ]
    assert meta["is_thing"] == [True] * 5 + [False] * 3
    assert meta["thing_classes"] == [0, 1, 2, 3, 4] and meta["stuff_classes"] == [5, 6, 7]
    from detectron2.data import MetadataCatalog

    md = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    inverse = {c: d for d, c in md.stuff_dataset_id_to_contiguous_id.items()}
    assert meta["dataset_category_ids"] == [inverse[c] for c in range(8)]
    assert meta["test_resize"] == {"min_size": 64, "max_size": 96, "interp": "bilinear"}
    assert meta["panoptic"] == {
        "merge": "detr",
        "threshold": 0.85,
        "min_segment_area": 4,
        "stuff_merge": "first",
        "overlap_threshold": 0.8,
    }
    assert meta["num_queries"] == 8 and len(meta["colors"]) == 8


def _val_results(cfg, model, runners, merge):
    """Per val image: the eager model's panoptic output (Detectron2's loader and mapper) and each
    runner's (the runtime's own reading and resize). Also PQ of each with COCOPanopticEvaluator."""
    from detectron2.evaluation import COCOPanopticEvaluator

    from detr_panoptic_d2.engine import DetrPanopticTrainer

    model.postprocessor.merge = merge
    loader = DetrPanopticTrainer.build_test_loader(cfg, "toy_panoptic_val")
    evaluators = {
        name: COCOPanopticEvaluator("toy_panoptic_val", os.path.join(cfg.OUTPUT_DIR, "pq", name))
        for name in ["eager", *runners]
    }
    for ev in evaluators.values():
        ev.reset()
    compared = 0
    for inputs in loader:
        (eager,) = model(inputs)
        ids, info = eager["panoptic_seg"]
        # (the evaluator rewrites segments_info in place: it gets copies)
        evaluators["eager"].process(inputs, [{"panoptic_seg": (ids, copy.deepcopy(info))}])
        for name, runner in runners.items():
            r_ids, r_info = runner.predict_file(inputs[0]["file_name"])[1:]
            # identical but for pixels where two masks tie to float rounding (this random model's
            # masks differ little between queries; a trained model's: 1-2 pixels in 200 images)
            differ = int((r_ids != ids.numpy()).sum())
            assert differ <= 0.01 * r_ids.size, (name, inputs[0]["file_name"], differ)
            key = [(s["id"], s["category_id"], s["isthing"]) for s in info]
            assert [(s["id"], s["category_id"], s["isthing"]) for s in r_info] == key
            assert [s["score"] for s in r_info] == pytest.approx(
                [s["score"] for s in info], abs=1e-5
            )
            evaluators[name].process(inputs, [{"panoptic_seg": (torch.from_numpy(r_ids), r_info)}])
        compared += len(info)
    return {k: ev.evaluate()["panoptic_seg"] for k, ev in evaluators.items()}, compared


@pytest.mark.parametrize("merge", ["detr", "maskformer"])
def test_panoptic_output_identical_on_toy_val(exported, export_toy_root, merge):
    cfg = export_cfg(exported["cfg"].OUTPUT_DIR, export_toy_root, merge=merge)  # (re-)registers
    runners = {
        key: ExportedPanopticModel(exported[key], merge=merge) for key in ("ts", "onnx", "onnx_all")
    }
    pq, segments = _val_results(cfg, exported["model"], runners, merge)
    assert segments >= 4  # the model produces segments
    for key in runners:
        for metric in ("PQ", "SQ", "RQ"):
            assert pq[key][metric] == pytest.approx(pq["eager"][metric], abs=0.5), (key, metric)


def test_nothing_kept_gives_void(exported, tmp_path):
    """Threshold 1.0: no query passes; the graphs return zero mask rows and the output is all
    void."""
    cfg = exported["cfg"]
    model = exported["model"]
    model.postprocessor.object_mask_threshold = 1.0
    try:
        for fmt in ("torchscript", "onnx"):
            export_model(cfg, model, fmt, str(tmp_path / fmt))
            runner = ExportedPanopticModel(str(tmp_path / fmt))
            out = as_torch(runner.run_graph(random_image(64, 85, 0).numpy()))
            assert out[2].shape[0] == 0 and out[3].shape == (0,)
            ids, info = runner(np.zeros((40, 50, 3), np.uint8))
            assert info == [] and ids.shape == (40, 50) and not ids.any()
    finally:
        model.postprocessor.object_mask_threshold = 0.85


def test_lower_runtime_threshold_is_refused(exported):
    with pytest.raises(ValueError, match="export threshold"):
        ExportedPanopticModel(exported["onnx"], threshold=0.5)
    ExportedPanopticModel(exported["onnx_all"], threshold=0.5)  # "all" has every mask


def test_bgr_model_takes_rgb(exported, export_toy_root, tmp_path):
    cfg = export_cfg(str(tmp_path), export_toy_root, extra=["INPUT.FORMAT", "BGR"])
    model = segment_model(cfg)
    export_model(cfg, model, "torchscript", str(tmp_path / "ts"))
    runner = ExportedPanopticModel(str(tmp_path / "ts"))
    image = random_image(64, 85, 3)
    out = as_torch(runner.run_graph(image.numpy()))
    ref = eager_graph_outputs(model, image, input_format="BGR")
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
