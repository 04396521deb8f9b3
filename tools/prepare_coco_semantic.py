#!/usr/bin/env python
"""Make COCO's semantic ground truth from its panoptic annotations, for mIoU on
coco_2017_{train,val}_panoptic_with_sem_seg (the layout Mask2Former's preparation script writes).

    python tools/prepare_coco_semantic.py [--root $DETECTRON2_DATASETS] [--splits val2017 train2017]

Writes coco/panoptic_semseg_<split>/*.png: contiguous class ids 0..132 (things and stuff), 255 where
void.
"""

import argparse
import sys

from detr_panoptic_d2.data.datasets import prepare_coco_panoptic_semseg


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="data set root (default: $DETECTRON2_DATASETS)"
    )
    parser.add_argument("--splits", nargs="+", default=["val2017", "train2017"])
    parser.add_argument("--num-workers", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        written = prepare_coco_panoptic_semseg(args.root, tuple(args.splits), args.num_workers)
    except FileNotFoundError as e:
        parser.error(str(e))
    for split, folder in written.items():
        print(f"{split}: wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
