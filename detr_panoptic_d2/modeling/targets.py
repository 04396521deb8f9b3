"""Detectron2 training inputs → DETR's targets (normalized cxcywh boxes, labels, padded masks)."""

import torch

from .box_ops import xyxy_to_cxcywh


def targets_from_instances(batched_inputs, images, with_masks):
    """Per image of ``batched_inputs`` (Detectron2 dicts with "instances"; ``images``: their
    ``ImageList``): "labels" (T,), "boxes" (T, 4) normalized cxcywh and, with ``with_masks``,
    "masks" (T, H_pad, W_pad) bool. Boxes are clipped to the image; degenerate ones are dropped with
    their masks, as DETR does. Errors name the image whose annotations are missing.

    The clipping and the dropping run where the instances are (the data loader's CPU tensors: no
    host sync with the device), and only what is read goes to the images' device: boxes and labels,
    and the masks only ``with_masks`` (stage 1 reads none)."""
    targets = []
    device = images.tensor.device
    hp, wp = images.tensor.shape[-2:]
    for x, (h, w) in zip(batched_inputs, images.image_sizes):
        if "instances" not in x:
            raise ValueError(f"training input {x.get('file_name', '?')} has no 'instances'")
        inst = x["instances"]
        boxes = inst.gt_boxes.tensor.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        t = {
            "labels": inst.gt_classes[keep].to(device),
            "boxes": xyxy_to_cxcywh(boxes[keep] / scale).to(device),
        }
        if with_masks:
            if not inst.has("gt_masks"):
                raise ValueError(
                    f"the mask head needs 'gt_masks' ({x.get('file_name', '?')} has none)"
                )
            gm = inst.gt_masks
            gm = (gm.tensor if hasattr(gm, "tensor") else gm)[keep.to(gm.device)].to(device)
            t["masks"] = torch.zeros((gm.shape[0], hp, wp), dtype=torch.bool, device=device)
            t["masks"][:, : gm.shape[1], : gm.shape[2]] = gm
        targets.append(t)
    return targets
