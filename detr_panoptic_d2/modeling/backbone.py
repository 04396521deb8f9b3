"""Detectron2 ResNet as DETR's backbone."""
import torch.nn.functional as F
from detectron2.modeling import build_backbone


def build_detr_backbone(cfg, input_shape=None):
    """Build ``cfg.MODEL.BACKBONE`` (a Detectron2 ResNet) exposing res2..res5.

    With ``MODEL.RESNETS.RES5_DILATION`` 2 (DC5), the first res5 block keeps dilation 1 as in
    torchvision's ``replace_stride_with_dilation``, on which DETR's DC5 weights were trained;
    Detectron2 dilates every res5 block.
    """
    backbone = build_backbone(cfg, input_shape)
    if cfg.MODEL.RESNETS.RES5_DILATION == 2 and hasattr(backbone, "res5"):
        conv2 = backbone.res5[0].conv2
        conv2.dilation, conv2.padding = (1, 1), (1, 1)
    return backbone


def downsample_padding_mask(mask, size):
    """(B, H, W) bool padding mask → (B, h, w), nearest, as DETR does for each feature map."""
    return F.interpolate(mask[None].float(), size=size).to(mask.dtype)[0]
