#!/usr/bin/env python
"""Run a trained DETR panoptic model on images and write PNG overlays.

    python tools/demo.py --config-file CONFIG --input img.jpg dir/ "imgs/*.png" --output out/ \
        [--confidence-threshold T] [--explain] MODEL.WEIGHTS model.pth
    python tools/demo.py --config-file CONFIG --dataset toy_panoptic_val --num 8 --output out/ \
        MODEL.WEIGHTS ...

--dataset draws each prediction next to the ground truth; --explain also writes, per image, each
kept query's box, multi-head attention maps and mask in one PNG (<name>_queries.png).
"""

import argparse
import glob
import os
import sys

import cv2
import numpy as np
import torch
import tqdm
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.data.dataset_mapper import read_image_file
from detr_panoptic_d2.visualization import (
    draw_ground_truth,
    draw_prediction,
    explain_queries,
    side_by_side,
)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def setup_cfg(args):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def list_inputs(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(
                os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS)
            )
        elif any(c in p for c in "*?["):
            files += sorted(glob.glob(os.path.expanduser(p)))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"--input: no such file or folder: {p}")
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", help="images, folders or glob patterns")
    parser.add_argument("--dataset", help="a registered data set: predictions next to ground truth")
    parser.add_argument("--num", type=int, default=8, help="with --dataset: number of images")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD (default: the config's)",
    )
    parser.add_argument(
        "--explain", action="store_true", help="also draw each kept query's attention and mask"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if bool(args.input) == bool(args.dataset):
        parser.error("give either --input or --dataset")

    setup_logger(name="detr_panoptic_d2")
    cfg = setup_cfg(args)
    register_datasets_from_cfg(cfg)
    dataset_dicts = None
    if args.dataset:
        dataset_dicts = DatasetCatalog.get(args.dataset)[: args.num]
        metadata = MetadataCatalog.get(args.dataset)
        files = [d["file_name"] for d in dataset_dicts]
    else:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
        try:
            files = list_inputs(args.input)
        except FileNotFoundError as e:
            parser.error(str(e))
    predictor = DefaultPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for i, path in enumerate(tqdm.tqdm(files, disable=len(files) < 2, desc="images")):
        try:  # as training and evaluation read images (PIL, EXIF orientation); errors name the file
            bgr = read_image_file(path, "BGR")
        except (OSError, ValueError) as e:
            tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)
            failed.append(path)
            continue
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        pred = predictor(bgr)
        picture = draw_prediction(rgb, pred, metadata)
        if dataset_dicts is not None:
            picture = side_by_side(draw_ground_truth(rgb, dataset_dicts[i], metadata), picture)
        name = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(args.output, f"{name}.png"), picture[:, :, ::-1])
        if args.explain:  # the model's input as DefaultPredictor makes it
            image = rgb if cfg.INPUT.FORMAT == "RGB" else bgr
            image = predictor.aug.get_transform(image).apply_image(image)
            inputs = {"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1))}
            explain_queries(
                predictor.model,
                inputs,
                metadata,
                os.path.join(args.output, f"{name}_queries.png"),
                input_format=cfg.INPUT.FORMAT,
            )
    print(f"wrote {len(files) - len(failed)} picture(s) to {args.output}")
    if failed:
        print(f"{len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
