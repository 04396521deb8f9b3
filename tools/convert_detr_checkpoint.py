#!/usr/bin/env python
"""Convert an original DETR checkpoint (facebookresearch/detr) into a detr-panoptic-d2 checkpoint.

    python tools/convert_detr_checkpoint.py \
        --source-model https://dl.fbaipublicfiles.com/detr/detr-r50-panoptic-00ce5173.pth \
        --output-model detr_r50_panoptic.pth
    python tools/train_net.py \
        --config-file configs/COCO-PanopticSegmentation/detr_R_50_stage2.yaml \
        --eval-only MODEL.WEIGHTS detr_r50_panoptic.pth

Panoptic checkpoints (DETRsegm, 250 classes) → 133 contiguous COCO panoptic classes; detection
checkpoints (DETR, 91 classes) → 80 COCO thing classes (--metadata coco_detection, picked
automatically).
"""

import argparse
import sys

from detr_panoptic_d2.checkpoint import METADATA, config_overrides, convert_detr_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source-model", required=True, help="original DETR checkpoint: local path or URL"
    )
    p.add_argument("--output-model", required=True, help="output Detectron2 checkpoint (.pth)")
    p.add_argument(
        "--metadata",
        choices=sorted(METADATA),
        default=None,
        help="class id mapping (default: coco_panoptic if the checkpoint has a mask head, "
        "else coco_detection)",
    )
    a = p.parse_args(argv)
    try:
        ckpt, info = convert_detr_checkpoint(a.source_model, a.output_model, a.metadata)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 1
    print(
        f"wrote {a.output_model}: {len(ckpt['model'])} tensors, {info.kind} DETR "
        f"R-{info.resnet_depth}, {info.source_num_classes} source classes -> {info.num_classes} "
        f"contiguous classes ({info.metadata})"
    )
    if info.dilation is None:
        print(
            "note: the checkpoint does not say whether res5 is dilated; for a DC5 model add "
            "MODEL.RESNETS.RES5_DILATION 2"
        )
    print("config overrides matching the checkpoint:")
    print("  " + " ".join(config_overrides(info)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
