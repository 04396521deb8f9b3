#!/usr/bin/env python
"""Check registered panoptic data sets the way training reads them, and list every problem.

    python tools/check_dataset.py --config-file CONFIG [--dataset NAME [--dataset NAME2 ...]] \\
        [KEY VALUE ...]

Reads every record of each data set (default: the config's DATASETS.TRAIN and DATASETS.TEST) with
the training mapper's rules: missing or unreadable (corrupt, truncated) images and PNGs, image/PNG
size mismatches, segment ids absent from the PNG or not listed in segments_info, category ids the
metadata does not know or beyond MODEL.DETR.NUM_CLASSES, duplicate segment ids, images above
INPUT.MAX_IMAGE_PIXELS, panoptic PNGs in the stored frame of an EXIF-rotated image. Images without
segments are counted (they are legal); images with an EXIF orientation are listed, with the frame
their PNG must be in (the displayed one). Exits 1 if there is any problem.
Register your own data sets first (e.g. in a copy of this script, before main()), as for training.
"""

import argparse
import sys

import tqdm
from detectron2.config import get_cfg

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.data.checker import check_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--dataset",
        action="append",
        help="a data set name, repeat for more (default: the config's)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_datasets_from_cfg(cfg)
    names = args.dataset or list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))
    failed = False
    for name in names:
        report = check_dataset(
            name,
            cfg.MODEL.DETR.NUM_CLASSES,
            cfg.INPUT.FORMAT,
            lambda r: tqdm.tqdm(r, desc=name),
            max_pixels=cfg.INPUT.MAX_IMAGE_PIXELS,
        )
        for note in report.exif:
            print(f"  note: {note}")
        for problem in report.problems:
            print(f"  {problem}")
        print(
            f"{name}: {report.records} records, {len(report.problems)} problem(s), "
            f"{report.empty} image(s) without segments, {len(report.exif)} with an EXIF "
            "orientation"
        )
        failed |= bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
