"""Box helpers on top of torchvision.ops (DETR predicts normalized cx, cy, w, h)."""

from torchvision.ops import box_convert


def cxcywh_to_xyxy(boxes):
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes):
    return box_convert(boxes, "xyxy", "cxcywh")
