#!/usr/bin/env python
"""Convert a torchvision ImageNet ResNet state dict into a Detectron2 backbone checkpoint for this
plugin.

    python tools/convert_torchvision_resnet.py \
        --source-model https://download.pytorch.org/models/resnet50-0676ba61.pth \
        --output-model R-50.pth
    python tools/train_net.py \
        --config-file configs/COCO-PanopticSegmentation/detr_R_50_stage1.yaml \
        MODEL.WEIGHTS R-50.pth

Keys become detr.backbone.stem.* / detr.backbone.res{2..5}.* (Detectron2 ResNet names in the
plugin's model), fc is dropped. The config must use torchvision-style blocks
(MODEL.RESNETS.STRIDE_IN_1X1 False; RES2_OUT_CHANNELS 64 for R-18/34).
"""

import argparse
import sys

from detr_panoptic_d2.checkpoint import (
    convert_torchvision_resnet,
    load_state_dict_file,
    save_d2_checkpoint,
)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source-model", required=True, help="torchvision ResNet state dict: local path or URL"
    )
    p.add_argument("--output-model", required=True, help="output Detectron2 checkpoint (.pth)")
    a = p.parse_args(argv)
    try:
        sd = convert_torchvision_resnet(
            load_state_dict_file(a.source_model), source_name=a.source_model
        )
        save_d2_checkpoint(
            sd, a.output_model, "detr-panoptic-d2 convert_torchvision_resnet (torchvision weights)"
        )
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 1
    print(f"wrote {a.output_model}: {len(sd)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
