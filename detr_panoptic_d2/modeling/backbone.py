"""Detectron2 ResNet as DETR's backbone, with DETR's DC5 variant."""

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


@BACKBONE_REGISTRY.register()
def build_detr_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet (``MODEL.RESNETS.*``) as ``build_resnet_backbone`` builds it, but DC5.

    With ``MODEL.RESNETS.RES5_DILATION`` 2, res5 keeps stride 16 and its blocks after the first are
    dilated, the first block keeping dilation 1, as torchvision's ``replace_stride_with_dilation``
    builds it (DETR's DC5 weights were trained that way); Detectron2's ``build_resnet_backbone``
    dilates every res5 block.
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
        )
    basic = depth in (18, 34)
    if r.RES5_DILATION not in (1, 2) or (basic and r.RES5_DILATION != 1):
        raise ValueError(
            f"MODEL.RESNETS.RES5_DILATION must be 1 or 2 (1 for R-18/34), got {r.RES5_DILATION}"
        )
    if basic and r.RES2_OUT_CHANNELS != 64:
        raise ValueError("MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for R-18/34")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions are not supported"
        )
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        dilated = idx == 3 and r.RES5_DILATION == 2
        first_stride = 1 if idx == 0 or dilated else 2
        kwargs = (
            {"block_class": BasicBlock}
            if basic
            else {
                "block_class": BottleneckBlock,
                "bottleneck_channels": bottleneck_channels,
                "stride_in_1x1": r.STRIDE_IN_1X1,
                "num_groups": r.NUM_GROUPS,
                "dilation_per_block": [1] + [r.RES5_DILATION if dilated else 1] * (num_blocks - 1),
            }
        )
        stages.append(
            ResNet.make_stage(
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=r.NORM,
                **kwargs,
            )
        )
        in_channels, out_channels, bottleneck_channels = (
            out_channels,
            out_channels * 2,
            bottleneck_channels * 2,
        )
    return DetrResNet(
        stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


class DetrResNet(ResNet):
    """Detectron2's ``ResNet`` (same modules, parameters, checkpoints), run channels-last on the CPU
    (oneDNN's native layout: no reorder around each convolution, forward and backward; the same
    values). Features come back channels-last there. Its folded inference copy is
    :class:`~detr_panoptic_d2.modeling.inference_opt.FoldedResNet`, made by the inference plan."""

    def forward(self, x):
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def downsample_padding_mask(mask, size):
    """(B, H, W) bool padding mask → (B, h, w), nearest, as DETR does for each feature map."""
    return F.interpolate(mask[None].float(), size=size).to(mask.dtype)[0]
