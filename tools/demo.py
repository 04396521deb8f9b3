#!/usr/bin/env python
"""Run a trained DETR panoptic model on images and write PNG overlays.

    python tools/demo.py --config-file CONFIG --input img.jpg dir/ "imgs/*.png" --output out/ \
        [--confidence-threshold T] [--explain] MODEL.WEIGHTS model.pth
    python tools/demo.py --config-file CONFIG --dataset toy_panoptic_val --num 8 --output out/ \
        MODEL.WEIGHTS ...

--dataset draws each prediction next to the ground truth; --explain also writes, per image, each
kept query's box, multi-head attention maps and mask in one PNG (<name>_queries.png).

Output names: each input's path relative to the common parent folder of all inputs, extension
dropped, under --output (a/1.jpg and b/1.jpg → out/a/1.png and out/b/1.png; one folder's images →
out/<stem>.png); names that differ only by extension keep it (out/1.jpg.png, out/1.png.png).
Images are read as training reads them (EXIF orientation, 16-bit scaled to 8 bits, at most
INPUT.MAX_IMAGE_PIXELS pixels); unreadable files are skipped, named, and make the exit status 1.
Without CUDA, MODEL.DEVICE falls back to cpu, with a warning.
"""

import argparse
import logging
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
from detr_panoptic_runtime.inputs import list_inputs, output_stems

logger = logging.getLogger("detr_panoptic_d2.demo")


def setup_cfg(args):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        logger.warning(f"MODEL.DEVICE {cfg.MODEL.DEVICE}: CUDA is not available, running on cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


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
    stems = output_stems(files)
    for i, path in enumerate(tqdm.tqdm(files, disable=len(files) < 2, desc="images")):
        try:  # as training and evaluation read images (PIL, EXIF orientation); errors name the file
            bgr = read_image_file(path, "BGR", cfg.INPUT.MAX_IMAGE_PIXELS)
        except (OSError, ValueError) as e:
            tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)
            failed.append(path)
            continue
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        pred = predictor(bgr)
        picture = draw_prediction(rgb, pred, metadata)
        if dataset_dicts is not None:
            picture = side_by_side(draw_ground_truth(rgb, dataset_dicts[i], metadata), picture)
        name = os.path.join(args.output, stems[i])
        os.makedirs(os.path.dirname(name), exist_ok=True)
        if not cv2.imwrite(f"{name}.png", picture[:, :, ::-1]):
            raise OSError(f"cannot write {name}.png")
        if args.explain:  # the model's input as DefaultPredictor makes it
            image = rgb if cfg.INPUT.FORMAT == "RGB" else bgr
            image = predictor.aug.get_transform(image).apply_image(image)
            inputs = {"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1))}
            explain_queries(
                predictor.model,
                inputs,
                metadata,
                f"{name}_queries.png",
                input_format=cfg.INPUT.FORMAT,
            )
    print(f"wrote {len(files) - len(failed)} picture(s) to {args.output}")
    if failed:
        print(f"{len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
