#!/usr/bin/env python
"""A trained model in reduced precision against float32: panoptic pixel agreement and latency per
image.

    python benchmarks/compare_precision.py --config-file configs/toy/detr_R18_toy_stage2.yaml \\
        [--dataset toy_panoptic_val] [--num 50] [--precision bf16] [--threads 2]
        MODEL.WEIGHTS model.pth

The same weights are loaded into a float32 model and a MODEL.DETR.TEST.PRECISION model; both run the
data set's test mapping (as --eval-only does) on the first --num images. Agreement: share of pixels
whose panoptic segment corresponds (compare_original.panoptic_agreement: segments matched
one-to-one, same category); kept queries: how many segments each output has. PQ itself:
tools/train_net.py --eval-only with the key set.
"""

import argparse
import time

import numpy as np
import torch
from common import machine_line
from compare_original import panoptic_agreement
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.data.dataset_mapper import DetrPanopticDatasetMapper


def build(cfg, precision):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DETR.TEST.PRECISION = precision
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def segments(result):
    ids, info = result["panoptic_seg"]
    return ids.cpu().numpy(), {0: -1, **{s["id"]: s["category_id"] for s in info}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", default=None, help="default: DATASETS.TEST[0]")
    p.add_argument("--num", type=int, default=50)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    register_datasets_from_cfg(cfg)
    name = args.dataset or cfg.DATASETS.TEST[0]
    mapper = DetrPanopticDatasetMapper(cfg, False)
    inputs = [mapper(d) for d in DatasetCatalog.get(name)[: args.num]]
    models = {"fp32": build(cfg, "fp32"), args.precision: build(cfg, args.precision)}
    print(machine_line(cfg.MODEL.DEVICE))
    print(f"{name}: {len(inputs)} images, weights {cfg.MODEL.WEIGHTS}")
    outputs, times = {}, {}
    for key, model in models.items():
        with torch.no_grad():
            model([inputs[0]])  # warm-up: derives the folded / cast weights
            times[key], outputs[key] = [], []
            for x in inputs:
                t = time.perf_counter()
                (res,) = model([x])
                times[key].append(time.perf_counter() - t)
                outputs[key].append(segments(res))
    agree = np.array(
        [
            panoptic_agreement(a[0], a[1], b[0], b[1])
            for a, b in zip(outputs["fp32"], outputs[args.precision])
        ]
    )
    same_count = np.mean(
        [len(a[1]) == len(b[1]) for a, b in zip(outputs["fp32"], outputs[args.precision])]
    )
    print(
        f"panoptic agreement {args.precision} vs fp32: mean {agree.mean():.4f}, "
        f"min {agree.min():.4f}, images >= 0.98: {np.mean(agree >= 0.98):.0%}; "
        f"same number of segments on {same_count:.0%} of the images"
    )
    for key in models:
        print(f"{key}: median {np.median(times[key]) * 1e3:.1f} ms / image")


if __name__ == "__main__":
    main()
