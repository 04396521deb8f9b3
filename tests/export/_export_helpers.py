"""Helpers of the export tests (a uniquely named module: ``conftest`` is ambiguous between test
folders): the tiny toy stage-2 config and a model whose queries pass the threshold."""

import tiny_toy
import torch


def export_cfg(out_dir, toy_root, merge="detr", threshold=0.85, extra=()):
    """The tiny toy stage-2 config (ResNet-18, 8 queries, 64-96 px test size) with the given
    merge."""
    return tiny_toy.tiny_cfg(
        out_dir,
        stage=2,
        toy_root=toy_root,
        extra=[
            "MODEL.DETR.TEST.PANOPTIC_MERGE",
            merge,
            "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD",
            threshold,
            *extra,
        ],
    )


def segment_model(cfg, seed=0):
    """A model of ``cfg`` whose queries are confident (class head x 8, no-object bias -2): with
    random masks, most queries reach the panoptic output."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.detr.class_embed.weight.mul_(8.0)
        model.detr.class_embed.bias[-1] = -2.0
    return model
