"""Checkpoints in the ORIGINAL DETR implementation's key layout, made from this plugin's R-50 models
by an inverse mapping written here independently of the converter (plugin names → DETR names,
contiguous class rows → COCO-id rows): what an official checkpoint looks like, with random
values."""

import argparse
import re

import detectron2.data.datasets  # noqa: F401  (builtin metadata)
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from detr_panoptic_d2 import add_detr_panoptic_config


def official_cfg(panoptic=True):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "DetrPanoptic"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    cfg.DATASETS.TRAIN = ()
    if panoptic:
        cfg.MODEL.MASK_HEAD.NAME = "DetrMaskHead"
        cfg.MODEL.DETR.NUM_CLASSES = 133
        cfg.DATASETS.TEST = ("coco_2017_val_panoptic",)
    else:
        cfg.MODEL.MASK_HEAD.NAME = ""
        cfg.MODEL.DETR.NUM_CLASSES = 80
        cfg.DATASETS.TEST = ("coco_2017_val",)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def randomized(model, seed):
    """The model with its FrozenBN statistics, norms and biases randomized (so every mapping
    matters)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif k.endswith(("running_mean", "bias")):
                v.copy_(torch.randn(v.shape, generator=g) * 0.05)
            elif ".norm." in k or re.search(
                r"(^|\.)(norm\d?|gn\d|decoder_norm|encoder_norm)\.weight$", k
            ):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.add_(torch.randn(v.shape, generator=g) * 0.01)
    return model


# ---- inverse mapping (plugin → original DETR), written independently of the converter ------------
_BN = {"weight", "bias", "running_mean", "running_var"}


def to_torchvision(name):
    parts = name.split(".")
    if parts[0] == "stem":
        return "conv1.weight" if parts[2] == "weight" else "bn1." + parts[-1]
    stage, block, mod = int(parts[0][3:]), parts[1], parts[2]
    base = f"layer{stage - 1}.{block}."
    if mod == "shortcut":
        return base + (
            "downsample.0.weight" if parts[3] == "weight" else "downsample.1." + parts[-1]
        )
    j = mod[-1]
    return base + (f"conv{j}.weight" if parts[3] == "weight" else f"bn{j}.{parts[-1]}")


def to_original(sd, panoptic, gen):
    """Plugin state dict → original DETR / DETRsegm state dict (COCO-id class rows, unused rows
    random)."""
    p = "detr." if panoptic else ""
    meta = MetadataCatalog.get("coco_2017_val_panoptic" if panoptic else "coco_2017_val")
    id_map = dict(meta.thing_dataset_id_to_contiguous_id)
    id_map.update(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}) if panoptic else {})
    rows = 251 if panoptic else 92
    out = {}
    for k, v in sd.items():
        k = k[len("detr.") :] if k.startswith("detr.") else k
        if k.startswith("backbone."):
            out[p + "backbone.0.body." + to_torchvision(k[len("backbone.") :])] = v.clone()
        elif k.startswith("transformer.encoder_layers."):
            out[p + "transformer.encoder.layers." + k[len("transformer.encoder_layers.") :]] = (
                v.clone()
            )
        elif k.startswith("transformer.decoder_layers."):
            out[p + "transformer.decoder.layers." + k[len("transformer.decoder_layers.") :]] = (
                v.clone()
            )
        elif k.startswith("transformer.decoder_norm."):
            out[p + "transformer.decoder.norm." + k.rsplit(".", 1)[1]] = v.clone()
        elif k.startswith("transformer.encoder_norm."):
            out[p + "transformer.encoder.norm." + k.rsplit(".", 1)[1]] = v.clone()
        elif k.startswith("class_embed."):
            full = torch.randn((rows,) + tuple(v.shape[1:]), generator=gen)
            for d, c in id_map.items():
                full[d] = v[c]
            full[rows - 1] = v[-1]
            out[p + k] = full
        elif k.startswith("mask_head.bbox_attention."):
            out["bbox_attention." + k[len("mask_head.bbox_attention.") :]] = v.clone()
        elif k.startswith("mask_head.mask_head."):
            out["mask_head." + k[len("mask_head.mask_head.") :]] = v.clone()
        else:  # input_proj, query_embed, bbox_embed
            out[p + k] = v.clone()
    return out


def official_args(**kw):
    d = dict(
        hidden_dim=256,
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        num_queries=100,
        pre_norm=False,
        dilation=False,
        backbone="resnet50",
        eos_coef=0.1,
        masks=True,
    )
    d.update(kw)
    return argparse.Namespace(**d)


def write_official_checkpoint(path, panoptic=True, seed=0, distinct_queries=False, **args):
    """Save an R-50 DETR(segm) checkpoint in the official layout ({"model": ..., "args": Namespace})
    with random values; returns the plugin model it was made from (the expected weights after
    conversion).
    ``distinct_queries``: object queries scaled up, so that, as in a trained model, the queries'
    decoder outputs differ enough to predict different classes (an untrained DETR gives them all the
    same class)."""
    torch.manual_seed(seed)
    model = randomized(build_model(official_cfg(panoptic)).eval(), seed + 1)
    if distinct_queries:
        with torch.no_grad():
            model.detr.query_embed.weight.mul_(10)
    original = to_original(model.state_dict(), panoptic, torch.Generator().manual_seed(seed + 2))
    torch.save({"model": original, "args": official_args(masks=panoptic, **args)}, path)
    return model
