#!/usr/bin/env python
"""Export a trained DETR panoptic model to TorchScript or ONNX for deployment without Detectron2.

    python tools/export_model.py --config-file CONFIG --format {torchscript,onnx} --output DIR \
        [--sample-image IMG] [--mask-queries kept|all] [--opset 17] MODEL.WEIGHTS model.pth \
        MODEL.DEVICE cpu

Writes DIR/model.ts or DIR/model.onnx and DIR/deploy.json (classes, thing/stuff split, data set
category ids, test resize, thresholds, merge mode). Run it with tools/run_exported.py (needs only
numpy, Pillow and torch or onnxruntime). The graph takes one uint8 RGB image (3, H, W) of any size
and returns class logits, boxes and the mask logits of the queries that pass the threshold ("kept";
"all": every query, fixed shapes, no NonZero op, for TensorRT). After exporting, the exported model
is run on the sample and compared with the eager model.
"""

import argparse
import logging
import os
import sys

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.export import MASK_QUERY_MODES, ONNX_OPSET, export_model
from detr_panoptic_runtime import ExportedPanopticModel

logger = logging.getLogger("detr_panoptic_d2.export")


def setup_cfg(args):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: MODEL.DEVICE set to cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_datasets_from_cfg(cfg)  # DATASETS.TEST[0]'s metadata: class names, thing/stuff, ids
    return cfg


def compare_with_eager(model, folder, sample, input_format="RGB"):
    """Max |Δ| between the exported graph and the eager model on the export sample."""
    exported = ExportedPanopticModel(folder)
    out = exported.run_graph(sample.cpu().numpy())
    out = [o if isinstance(o, torch.Tensor) else torch.from_numpy(o) for o in out]
    logits, boxes, masks, query_index = [o.cpu() for o in out]
    with torch.no_grad():
        x = sample.float().flip(0) if input_format == "BGR" else sample.float()
        x = (x - model.pixel_mean) / model.pixel_std
        outputs, features = model.detr(x[None], torch.zeros_like(x[None, 0], dtype=torch.bool))
        q = query_index.to(sample.device)
        ref_masks = model.mask_head(features, torch.zeros_like(q), q).cpu()
    ref_logits, ref_boxes = outputs["pred_logits"][0].cpu(), outputs["pred_boxes"][0].cpu()

    def delta(a, b):
        return float((a - b).abs().max()) if a.numel() else 0.0

    return {
        "logits": delta(logits, ref_logits),
        "boxes": delta(boxes, ref_boxes),
        "mask_logits": delta(masks, ref_masks),
        "num_masks": int(query_index.numel()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--sample-image", help="image to trace with (default: a random picture)")
    parser.add_argument(
        "--mask-queries",
        default="kept",
        choices=MASK_QUERY_MODES,
        help="kept: masks only for queries above the threshold (default); all: every query (fixed "
        "shapes, no NonZero: TensorRT)",
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    parser.add_argument("--skip-check", action="store_true", help="do not compare with eager")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.sample_image and not os.path.isfile(args.sample_image):
        parser.error(f"--sample-image: no such file: {args.sample_image}")
    cfg = setup_cfg(args)
    if not cfg.MODEL.MASK_HEAD.NAME:
        parser.error("the config has no mask head (MODEL.MASK_HEAD.NAME): export a stage-2 model")
    # eval mode before loading: a checkpoint that leaves parameters uninitialized (a stage-1
    # checkpoint under this stage-2 config, ...) is an error naming them
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetrCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("no MODEL.WEIGHTS: exporting a RANDOMLY INITIALIZED model")
    model.check_initialized()  # the export traces the body and the head, not model.forward
    path, meta, sample = export_model(
        cfg, model, args.format, args.output, args.sample_image, args.mask_queries, args.opset
    )
    print(f"wrote {path} and {os.path.join(args.output, 'deploy.json')}")
    if not args.skip_check:
        d = compare_with_eager(model, args.output, sample, cfg.INPUT.FORMAT)
        print(
            f"exported vs eager on the sample ({tuple(sample.shape[1:])}, {d['num_masks']} masks): "
            f"max |Δ| logits {d['logits']:.2e}, boxes {d['boxes']:.2e}, "
            f"mask logits {d['mask_logits']:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
