"""Helpers of the modeling tests (imported by name: ``conftest`` is ambiguous when several test
directories are collected together): a tiny DETR config (ResNet-18, hidden 128, 1 enc / 2 dec
layers, 10 queries, 5 classes) and synthetic Detectron2 inputs."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from torchvision.ops import masks_to_boxes

from detr_panoptic_d2 import add_detr_panoptic_config

NUM_CLASSES = 5
NUM_QUERIES = 10
HIDDEN_DIM = 128
DEC_LAYERS = 2


def tiny_cfg(mask_head=False, **overrides):
    """A CPU config small enough for a train step in well under a second.

    overrides: dotted keys relative to the config root, e.g. ``{"MODEL.DETR.DROPOUT": 0.0}``.
    """
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "DetrPanoptic"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM = HIDDEN_DIM
    d.NHEADS = 8
    d.ENC_LAYERS = 1
    d.DEC_LAYERS = DEC_LAYERS
    d.DIM_FEEDFORWARD = 128
    d.NUM_OBJECT_QUERIES = NUM_QUERIES
    d.NUM_CLASSES = NUM_CLASSES
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    if mask_head:
        cfg.MODEL.MASK_HEAD.NAME = "DetrMaskHead"
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def build_tiny_model(mask_head=False, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(mask_head=mask_head, **overrides))


def rect_masks(h, w, n, offset=0):
    """(n, h, w) bool rectangles, distinct per index."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = (5 * i + offset) % max(1, h - 20), (3 * i + offset) % max(1, w - 30)
        masks[i, y0 : y0 + 20, x0 : x0 + 30] = True
    return masks


def make_input(h, w, n, seed=0, with_masks=True, **extra):
    """One Detectron2 training/inference dict with n rectangle instances."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g).float()
    inst = Instances((h, w))
    masks = rect_masks(h, w, n, offset=seed)
    inst.gt_boxes = Boxes(masks_to_boxes(masks) if n else torch.zeros(0, 4))
    inst.gt_classes = torch.arange(n, dtype=torch.int64) % NUM_CLASSES
    if with_masks:
        inst.gt_masks = BitMasks(masks)
    return {"image": img, "instances": inst, "height": h, "width": w, **extra}


def every_query_outputs(model, batch, planned):
    """(outputs, (B * N, H/4, W/4) mask logits of every query, image by image) of ``batch``:
    ``planned``, through the model's inference plan (inference mode); else from the modules
    themselves (autograd on, float32, as in training)."""
    with torch.inference_mode() if planned else torch.enable_grad():
        images, mask = model.preprocess_image(batch)
        if planned:
            outputs, features = model.run_body(images.tensor, mask)
            kwargs = model.prepare_inference().mask_head_kwargs()
        else:
            outputs, features = model.detr(images.tensor, mask)
            kwargs = {}
        n = outputs["pred_logits"].shape[1]
        b = torch.arange(len(batch)).repeat_interleave(n)
        q = torch.arange(n).repeat(len(batch))
        masks = model.mask_head(features, b, q, **kwargs)
    outputs = {k: outputs[k].detach().clone() for k in ("pred_logits", "pred_boxes")}
    return outputs, masks.detach().clone()


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run faster on one thread, and much faster when the cores are shared. Autouse in
    the folders whose conftest imports it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
