"""DetrPanoptic end to end on a tiny config: losses, gradients, inference outputs, padding,
targets."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from detr_test_utils import (
    DEC_LAYERS,
    NUM_CLASSES,
    NUM_QUERIES,
    build_tiny_model,
    make_input,
    tiny_cfg,
)

from detr_panoptic_d2.modeling import DetrPanoptic
from detr_panoptic_d2.modeling.box_ops import cxcywh_to_xyxy

STAGE1_KEYS = {"loss_ce", "loss_bbox", "loss_giou"}
AUX_KEYS = {f"{k}_{i}" for k in STAGE1_KEYS for i in range(DEC_LAYERS - 1)}


def test_build_through_detectron2_registry():
    model = build_model(tiny_cfg())
    assert isinstance(model, DetrPanoptic)
    assert model.mask_head is None and not model.postprocessor.panoptic_on
    assert model.detr.query_embed.weight.shape == (NUM_QUERIES, 128)
    assert model.detr.class_embed.out_features == NUM_CLASSES + 1


def test_train_step_losses_metrics_and_gradients(tiny_model):
    batch = [make_input(64, 96, 3), make_input(96, 64, 2, seed=1)]
    with EventStorage() as storage:
        losses = tiny_model(batch)
        latest = storage.latest()
    assert set(losses) == STAGE1_KEYS | AUX_KEYS
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert "class_error" in latest and "cardinality_error" in latest
    assert "class_error" not in losses
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    # FREEZE_AT=2 (default): stem and res2 are frozen and get no gradient
    assert all(
        p.grad is None
        for n, p in tiny_model.named_parameters()
        if n.startswith("detr.backbone.stem.")
    )


def test_train_outside_event_storage(tiny_model):
    losses = tiny_model([make_input(64, 64, 1)])
    assert set(losses) == STAGE1_KEYS | AUX_KEYS


def test_no_deep_supervision():
    model = build_tiny_model(**{"MODEL.DETR.DEEP_SUPERVISION": False})
    with EventStorage():
        losses = model([make_input(64, 64, 1)])
    assert set(losses) == STAGE1_KEYS


def test_image_without_annotations_trains(tiny_model):
    with EventStorage():
        losses = tiny_model([make_input(64, 96, 0)])
    assert set(losses) == STAGE1_KEYS | AUX_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    sum(losses.values()).backward()
    assert tiny_model.detr.class_embed.weight.grad is not None


def test_missing_instances_raises(tiny_model):
    x = make_input(64, 64, 1)
    del x["instances"]
    with pytest.raises(ValueError, match="instances"):
        tiny_model([x])


def _expected_boxes(model, x, out_h, out_w):
    """Boxes straight from the heads, mapped to the output size by hand."""
    images, mask = model.preprocess_image([x])
    outputs, _ = model.detr(images.tensor, mask)
    boxes = cxcywh_to_xyxy(outputs["pred_boxes"][0]) * torch.tensor([out_w, out_h, out_w, out_h])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
    probs = outputs["pred_logits"][0].softmax(-1)[:, :-1]
    return boxes, *probs.max(-1)


def test_inference_instances_rescaled_to_requested_size(tiny_model):
    tiny_model.eval()
    x = make_input(64, 96, 2, height=100, width=50)
    with torch.no_grad():
        (res,) = tiny_model([x])
        exp_boxes, exp_scores, exp_classes = _expected_boxes(tiny_model, x, 100, 50)
    assert set(res) == {"instances"}  # no mask head: no panoptic output
    inst = res["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (100, 50)
    assert len(inst) == NUM_QUERIES  # without a mask head every query is an instance, as DETR
    b = inst.pred_boxes.tensor
    assert (
        (b[:, 0] >= 0).all()
        and (b[:, 2] <= 50).all()
        and (b[:, 1] >= 0).all()
        and (b[:, 3] <= 100).all()
    )
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()
    torch.testing.assert_close(b, exp_boxes, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(inst.scores, exp_scores)
    assert torch.equal(inst.pred_classes, exp_classes)


def test_inference_without_height_width_uses_image_size(tiny_model):
    tiny_model.eval()
    x = make_input(64, 96, 0)
    del x["height"], x["width"]
    with torch.no_grad():
        (res,) = tiny_model([x])
    assert res["instances"].image_size == (64, 96)


def test_deterministic_for_fixed_seed():
    x = make_input(64, 96, 2)
    m1, m2 = build_tiny_model(seed=7).eval(), build_tiny_model(seed=7).eval()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    with torch.no_grad():
        i1, i2 = m1([x])[0]["instances"], m2([x])[0]["instances"]
    assert torch.equal(i1.pred_boxes.tensor, i2.pred_boxes.tensor) and torch.equal(
        i1.scores, i2.scores
    )
    m3 = build_tiny_model(seed=8)
    assert not torch.equal(m3.detr.query_embed.weight, m1.detr.query_embed.weight)


def test_batch_of_different_sizes_and_padding_mask(tiny_model):
    batch = [
        make_input(64, 96, 2, height=64, width=96),
        make_input(96, 64, 1, seed=1, height=48, width=32),
    ]
    images, mask = tiny_model.preprocess_image(batch)
    assert images.tensor.shape[-2:] == (96, 96) and images.image_sizes == [(64, 96), (96, 64)]
    expected = torch.ones(2, 96, 96, dtype=torch.bool)
    expected[0, :64, :96] = False
    expected[1, :96, :64] = False
    assert torch.equal(mask, expected)
    # padding is zero after normalization, as DETR
    assert (images.tensor[0, :, 64:] == 0).all() and (images.tensor[1, :, :, 64:] == 0).all()
    with EventStorage():
        losses = tiny_model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    tiny_model.eval()
    with torch.no_grad():
        res = tiny_model(batch)
    assert [r["instances"].image_size for r in res] == [(64, 96), (48, 32)]


def test_prepare_targets_drops_degenerate_boxes_and_normalizes(tiny_model):
    h, w = 64, 96
    small = make_input(h, w, 0)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(
        torch.tensor(
            [
                [10.0, 20.0, 40.0, 50.0],  # kept
                [30.0, 10.0, 30.0, 40.0],  # zero width
                [5.0, 33.0, 25.0, 33.0],  # zero height
                [100.0, 5.0, 120.0, 30.0],  # outside the image: zero width after clipping
                [-10.0, -5.0, 20.0, 80.0],  # clipped to (0, 0, 20, 64), kept
            ]
        )
    )
    inst.gt_classes = torch.tensor([0, 1, 2, 3, 4])
    small["instances"] = inst
    big = make_input(96, 128, 1, seed=2)
    images, _ = tiny_model.preprocess_image([small, big])
    t0, t1 = tiny_model.prepare_targets([small, big], images)
    assert t0["labels"].tolist() == [0, 4]
    # normalized by the unpadded image size (w, h), cxcywh
    expected = torch.tensor([[25 / w, 35 / h, 30 / w, 30 / h], [10 / w, 32 / h, 20 / w, 64 / h]])
    torch.testing.assert_close(t0["boxes"], expected)
    assert len(t1["labels"]) == 1 and "masks" not in t0  # stage 1: no masks


def test_prepare_targets_drops_masks_of_degenerate_boxes():
    model = build_tiny_model(mask_head=True)
    x = make_input(64, 96, 3)
    boxes = x["instances"].gt_boxes.tensor.clone()
    boxes[1, 2] = boxes[1, 0]  # zero width
    x["instances"].gt_boxes = Boxes(boxes)
    y = make_input(96, 64, 1, seed=1)
    images, _ = model.preprocess_image([x, y])
    t0, t1 = model.prepare_targets([x, y], images)
    gm = x["instances"].gt_masks.tensor
    assert t0["masks"].shape == (2, 96, 96) and t0["labels"].tolist() == [0, 2]
    assert torch.equal(t0["masks"][:, :64, :96], gm[[0, 2]]) and not t0["masks"][:, 64:].any()
    assert (
        torch.equal(t1["masks"][:, :, :64], y["instances"].gt_masks.tensor)
        and not t1["masks"][:, :, 64:].any()
    )


def _register_metadata(name, things, stuff):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={10 + c: c for c in things},
        stuff_dataset_id_to_contiguous_id={10 + c: c for c in list(things) + list(stuff)},
    )


def test_thing_stuff_split_read_once_when_the_model_is_built():
    _register_metadata("registered_before_build_set_for_test", things=[0, 1], stuff=[2, 3, 4])
    cfg = tiny_cfg(mask_head=True, **{"DATASETS.TEST": ("registered_before_build_set_for_test",)})
    model = build_model(cfg).eval()
    assert model.postprocessor.is_thing.tolist() == [True, True, False, False, False]
    # read once: later changes to the catalog do not reach a built model
    from detectron2.data import MetadataCatalog

    MetadataCatalog.remove("registered_before_build_set_for_test")
    _register_metadata("registered_before_build_set_for_test", things=[0], stuff=[1, 2, 3, 4])
    model([make_input(64, 64, 0)])
    assert model.postprocessor.is_thing.tolist() == [True, True, False, False, False]


def test_without_metadata_every_class_is_a_thing(caplog):
    cfg = tiny_cfg(mask_head=True, **{"DATASETS.TEST": ("never_registered_set_for_test",)})
    with caplog.at_level("WARNING"):
        model = build_model(cfg)
    assert model.postprocessor.is_thing.all()
    assert "never_registered_set_for_test" in caplog.text


def test_metadata_with_more_classes_than_the_model_is_rejected():
    _register_metadata(
        "too_many_classes_set_for_test", things=[0], stuff=list(range(1, NUM_CLASSES + 2))
    )
    with pytest.raises(ValueError, match="MODEL.DETR.NUM_CLASSES"):
        build_model(tiny_cfg(**{"DATASETS.TEST": ("too_many_classes_set_for_test",)}))
