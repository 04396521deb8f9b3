"""Checkpoints that leave parts of the model uninitialized: allowed in training (the log lists what
starts from scratch, grouped by module), an error at inference naming the missing modules, their
tensor counts and the file, whichever loader did the load (DetrCheckpointer, Detectron2's
DetectionCheckpointer, DefaultPredictor, a plain ``load_state_dict``)."""

import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input, tiny_cfg

from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.checkpoint.loading import UninitializedParametersError, group_keys

DN = {"MODEL.DETR.DN.COPIES": 2}


@pytest.fixture
def stage1_file(tmp_path):
    """A stage-1 (no mask head) checkpoint of the tiny model."""
    path = tmp_path / "stage1" / "model_final.pth"
    path.parent.mkdir()
    torch.save({"model": build_tiny_model(seed=0).state_dict(), "iteration": 9}, path)
    return path


def _mask_head_count(model):
    return sum(1 for k in model.state_dict() if k.startswith("mask_head."))


def _infer(model):
    with torch.no_grad():
        return model([make_input(64, 96, 0)])


def test_group_keys_by_largest_fully_missing_module():
    all_keys = [
        "detr.backbone.stem.conv1.weight",
        "detr.backbone.res2.0.conv1.weight",
        "detr.backbone.res2.0.conv1.norm.bias",
        "detr.class_embed.weight",
        "detr.class_embed.bias",
        "mask_head.lay1.weight",
        "mask_head.lay1.bias",
        "mask_head.out.weight",
    ]
    missing = all_keys[1:2] + all_keys[3:]
    assert group_keys(missing, all_keys) == [
        ("detr.backbone.res2.0.conv1.weight", 1),  # its module's norm was loaded
        ("detr.class_embed.*", 2),
        ("mask_head.*", 3),
    ]
    assert group_keys([], all_keys) == []
    assert group_keys(all_keys, all_keys) == [("detr.*", 5), ("mask_head.*", 3)]


def test_stage1_checkpoint_in_training_is_logged_then_inference_is_an_error(stage1_file, caplog):
    model = build_tiny_model(mask_head=True, seed=1)
    n = _mask_head_count(model)
    with caplog.at_level(logging.INFO, logger="detr_panoptic_d2"):
        DetrCheckpointer(model).load(str(stage1_file))  # train mode: allowed
    assert f"Initialized from scratch (not in {stage1_file}): mask_head.* ({n} tensors)" in (
        caplog.text
    )
    model.eval()
    with pytest.raises(UninitializedParametersError) as e:
        _infer(model)
    msg = str(e.value)
    assert f"mask_head.* ({n} tensors) missing from {stage1_file}" in msg
    assert "stage-1 checkpoint" in msg and "stage-2 checkpoint" in msg
    assert "detr." not in msg  # the body was loaded


@pytest.mark.parametrize("loader", ["DetrCheckpointer", "DetectionCheckpointer", "state_dict"])
def test_load_in_eval_mode_raises_at_the_load(stage1_file, loader):
    model = build_tiny_model(mask_head=True, seed=1, **{"MODEL.WEIGHTS": str(stage1_file)}).eval()
    with pytest.raises(UninitializedParametersError, match=r"mask_head\.\* \(\d+ tensors\)") as e:
        if loader == "state_dict":
            model.load_state_dict(torch.load(stage1_file)["model"], strict=False)
        else:
            (DetrCheckpointer if loader == "DetrCheckpointer" else DetectionCheckpointer)(
                model
            ).load(str(stage1_file))
    assert str(stage1_file) in str(e.value)  # the loader's file, or MODEL.WEIGHTS
    with pytest.raises(UninitializedParametersError):
        _infer(model)  # and it stays refused


def test_default_predictor_refuses_a_stage1_checkpoint(stage1_file):
    cfg = tiny_cfg(mask_head=True, **{"MODEL.WEIGHTS": str(stage1_file)})
    with pytest.raises(UninitializedParametersError) as e:
        DefaultPredictor(cfg)
    assert "mask_head.*" in str(e.value) and str(stage1_file) in str(e.value)


def test_a_model_trained_after_a_partial_load_runs_inference(stage1_file):
    model = build_tiny_model(mask_head=True, seed=1)
    DetrCheckpointer(model).load(str(stage1_file))
    model.train()
    with EventStorage():
        sum(model([make_input(64, 96, 2)]).values()).backward()
    model.eval()
    out = _infer(model)
    assert "panoptic_seg" in out[0]


def test_complete_checkpoints_load_in_eval_mode(tmp_path):
    """A whole checkpoint: nothing missing (non-persistent buffers are not in checkpoints and do
    not count), also when the checkpoint lacks the training-only queries of a DN config."""
    source = build_tiny_model(mask_head=True, seed=3)
    path = tmp_path / "full.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_tiny_model(mask_head=True, seed=4).eval()
    DetrCheckpointer(model).load(str(path))
    assert model._uninitialized == {}
    _infer(model)
    with_dn = build_tiny_model(mask_head=True, seed=4, **DN).eval()
    assert any(k.startswith("detr.training_queries.") for k in with_dn.state_dict())
    DetectionCheckpointer(with_dn).load(str(path))  # no error at the load
    assert with_dn._uninitialized == {}
    _infer(with_dn)


def test_class_head_of_other_classes_scratch_in_training_error_at_inference(tmp_path, caplog):
    source = build_tiny_model(seed=3, **{"MODEL.DETR.NUM_CLASSES": 7})
    path = tmp_path / "seven.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_tiny_model(seed=4)
    with caplog.at_level(logging.INFO, logger="detr_panoptic_d2"):
        DetrCheckpointer(model).load(str(path))
    assert "Initialized from scratch" in caplog.text
    assert "detr.class_embed.* (2 tensors)" in caplog.text
    model.eval()
    with pytest.raises(UninitializedParametersError) as e:
        _infer(model)
    assert f"detr.class_embed.* (2 tensors) missing from {path}" in str(e.value)
    assert "MODEL.DETR.NUM_CLASSES" in str(e.value)


def test_imagenet_like_backbone_only_checkpoint_names_every_missing_module(tmp_path):
    source = build_tiny_model(seed=3)
    path = tmp_path / "backbone.pth"
    torch.save(
        {"model": {k: v for k, v in source.state_dict().items() if k.startswith("detr.backbone.")}},
        path,
    )
    model = build_tiny_model(seed=4)
    DetrCheckpointer(model).load(str(path))
    model.eval()
    with pytest.raises(UninitializedParametersError) as e:
        model.check_initialized()
    msg = str(e.value)
    for module in ("detr.input_proj.*", "detr.query_embed.weight", "detr.transformer.*"):
        assert module in msg
    assert "detr.class_embed.* (2 tensors)" in msg and "detr.bbox_embed.* (6 tensors)" in msg
    assert "detr.backbone" not in msg


def test_stage2_body_only_needs_a_mask_head(stage1_file, tmp_path):
    """MODEL.DETR.FROZEN_WEIGHTS alone leaves the mask head uninitialized (fine to train, not to
    infer); with MODEL.MASK_HEAD.WEIGHTS, or after a full checkpoint, the model is complete."""
    frozen = {"MODEL.DETR.FROZEN_WEIGHTS": str(stage1_file)}
    model = build_tiny_model(mask_head=True, seed=1, **frozen).eval()
    with pytest.raises(UninitializedParametersError) as e:
        _infer(model)
    assert f"missing from MODEL.DETR.FROZEN_WEIGHTS {stage1_file}" in str(e.value)
    assert "mask_head.*" in str(e.value)

    head_file = tmp_path / "head.pth"
    torch.save({"model": build_tiny_model(mask_head=True, seed=5).state_dict()}, head_file)
    both = build_tiny_model(
        mask_head=True, seed=1, **frozen, **{"MODEL.MASK_HEAD.WEIGHTS": str(head_file)}
    ).eval()
    _infer(both)
    DetrCheckpointer(model).load(str(head_file))  # a whole stage-2 checkpoint
    _infer(model)
