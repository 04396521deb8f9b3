"""Loading checkpoints: the earlier key layout (DETR body at the top of the model) still loads
everywhere, and DetrCheckpointer fine-tunes onto other classes (class head re-initialized) but
rejects any other mismatch."""

import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detr_test_utils import build_tiny_model

from detr_panoptic_d2.checkpoint import DetrCheckpointer, rename_legacy_keys


def _legacy(state):
    """The key layout of checkpoints written before the DETR body had its own module."""
    return {(k[len("detr.") :] if k.startswith("detr.") else k): v for k, v in state.items()}


def test_rename_rule():
    state = {
        "backbone.res2.0.conv1.weight": 1,
        "class_embed.bias": 2,
        "mask_head.mask_head.lay1.weight": 3,
        "detr.query_embed.weight": 4,
    }
    assert rename_legacy_keys(state) == 2
    assert set(state) == {
        "detr.backbone.res2.0.conv1.weight",
        "detr.class_embed.bias",
        "mask_head.mask_head.lay1.weight",
        "detr.query_embed.weight",
    }
    assert rename_legacy_keys(state) == 0  # idempotent


@pytest.mark.parametrize(
    "loader", ["load_state_dict", "DetectionCheckpointer", "DetrCheckpointer", "frozen"]
)
def test_legacy_layout_loads(tmp_path, loader):
    source = build_tiny_model(mask_head=True, seed=3)
    expected = source.state_dict()
    legacy = _legacy(expected)
    assert "class_embed.weight" in legacy and not any(k.startswith("detr.") for k in legacy)
    path = tmp_path / "legacy.pth"
    torch.save({"model": legacy, "iteration": 5}, path)
    if loader == "frozen":
        model = build_tiny_model(mask_head=True, seed=4, **{"MODEL.DETR.FROZEN_WEIGHTS": str(path)})
        keys = [k for k in expected if k.startswith("detr.")]
    else:
        model = build_tiny_model(mask_head=True, seed=4)
        keys = list(expected)
        if loader == "load_state_dict":
            model.load_state_dict(legacy, strict=True)
        else:
            checkpointer = (
                DetectionCheckpointer if loader == "DetectionCheckpointer" else DetrCheckpointer
            )(model)
            checkpointer.load(str(path))
    own = model.state_dict()
    assert all(torch.equal(own[k], expected[k]) for k in keys)


def test_class_head_reinitialized_for_other_classes(tmp_path, caplog):
    source = build_tiny_model(seed=3, **{"MODEL.DETR.NUM_CLASSES": 7})
    path = tmp_path / "seven.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_tiny_model(seed=4)  # 5 classes
    fresh = model.detr.class_embed.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        DetrCheckpointer(model).load(str(path))
    assert torch.equal(model.detr.class_embed.weight, fresh)  # kept its initialization
    own, src = model.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in own if not k.startswith("detr.class_embed."))
    assert "Re-initialized" in caplog.text and "detr.class_embed.weight" in caplog.text
    assert "(8, 128)" in caplog.text and "(6, 128)" in caplog.text


def test_other_shape_mismatch_is_an_error(tmp_path):
    source = build_tiny_model(seed=3, **{"MODEL.DETR.NUM_OBJECT_QUERIES": 12})
    path = tmp_path / "queries.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_tiny_model(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"detr\.query_embed\.weight.*queries\.pth|queries\.pth.*detr\.query_embed"
    ):
        DetrCheckpointer(model).load(str(path))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded
