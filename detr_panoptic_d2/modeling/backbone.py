"""Detectron2 ResNet as DETR's backbone, with DETR's DC5 variant, and its folded inference path."""

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from .inference_opt import DerivedTensors, FoldedResNet, module_tensors

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


# Training on the CPU: channels-last activations (oneDNN's native layout: no reorder around each
# convolution, forward and backward; same values).
TRAIN_CHANNELS_LAST = True


class DetrResNet(ResNet):
    """Detectron2's ``ResNet`` (same modules, parameters, checkpoints) with a fast inference path.

    In eval mode without autograd (inference, or the frozen body of stage-2 training) it runs a
    :class:`~detr_panoptic_d2.modeling.inference_opt.FoldedResNet`: each BatchNorm folded into the
    convolution before it, channels-last, in the dtype of the input (under autocast: autocast's
    dtype), folded in float64 from the float32 weights. The copy is derived once and rebuilt when a
    weight or statistic changes (training, loading, ``.to()``); it is never part of the
    ``state_dict``. Otherwise (training, or gradients needed) the modules run as in Detectron2 (on
    the CPU channels-last, ``TRAIN_CHANNELS_LAST``). Features come back channels-last (the same
    values up to float rounding).
    """

    # runs in its input's dtype from its float32 weights: InferenceRunner leaves it out of the
    # reduced-precision copy of the body
    follows_input_dtype = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._folded = DerivedTensors()

    def forward(self, x):
        if self.training or torch.is_grad_enabled() or not FoldedResNet.supports(self):
            if TRAIN_CHANNELS_LAST and x.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            return super().forward(x)
        dtype = x.dtype  # under autocast (a frozen body in mixed-precision training): its dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        return self.folded(dtype, x.device)(x)

    def folded(self, dtype=torch.float32, device=None):
        """The folded inference copy for ``dtype`` (rebuilt when the weights changed since)."""
        return self._folded.get(
            module_tensors(self), (dtype, device), lambda: FoldedResNet(self, dtype)
        )


def downsample_padding_mask(mask, size):
    """(B, H, W) bool padding mask → (B, h, w), nearest, as DETR does for each feature map."""
    return F.interpolate(mask[None].float(), size=size).to(mask.dtype)[0]
