"""The original DETR implementation, from a local checkout given by the user, on the plugin's weights.

Nothing of the original is shipped here: ``--reference-repo`` points at a clone of the original DETR
repository. Its model is built with random initialization (no download), its state dict is converted with
this plugin's converter and loaded into the plugin's model, so that both run on the same weights.
"""
import functools
import sys
from types import SimpleNamespace

import torch
import torchvision

from detr_panoptic_d2.checkpoint import convert_detr_state_dict

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _no_download(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        kwargs.pop("pretrained", None)
        kwargs["weights"] = None
        return fn(*args, **kwargs)

    return wrapped


def reference_args(cfg, masks=True):
    d = cfg.MODEL.DETR
    return SimpleNamespace(
        hidden_dim=d.HIDDEN_DIM, nheads=d.NHEADS, enc_layers=d.ENC_LAYERS, dec_layers=d.DEC_LAYERS,
        dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT, pre_norm=d.PRE_NORM, num_queries=d.NUM_OBJECT_QUERIES,
        backbone=f"resnet{cfg.MODEL.RESNETS.DEPTH}", dilation=cfg.MODEL.RESNETS.RES5_DILATION == 2, lr_backbone=1e-5,
        masks=masks, dataset_file="coco_panoptic", aux_loss=d.DEEP_SUPERVISION, frozen_weights=None,
        position_embedding="sine", eos_coef=d.NO_OBJECT_WEIGHT, set_cost_class=d.COST_CLASS,
        set_cost_bbox=d.COST_BBOX, set_cost_giou=d.COST_GIOU, bbox_loss_coef=d.L1_WEIGHT,
        giou_loss_coef=d.GIOU_WEIGHT, mask_loss_coef=d.MASK_WEIGHT, dice_loss_coef=d.DICE_WEIGHT, device="cpu",
        num_classes=250,
    )


class OriginalDetrPanoptic:
    """The original DETRsegm + PostProcessPanoptic (threshold 0.85); its weights are copied into
    ``plugin_model`` when one is given."""

    def __init__(self, repo, cfg, plugin_model=None, device="cpu", seed=0):
        if repo not in sys.path:
            sys.path.insert(0, repo)
        for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
            setattr(torchvision.models, name, _no_download(getattr(torchvision.models, name)))
        from models.detr import build
        from models.segmentation import PostProcessPanoptic

        torch.manual_seed(seed)
        self.model = build(reference_args(cfg))[0]
        self.model.to(device).eval()
        if plugin_model is not None:
            state, _ = convert_detr_state_dict(self.model.state_dict(), "coco_panoptic")
            plugin_model.load_state_dict(state, strict=True)
        self.postprocess = PostProcessPanoptic({i: i <= 90 for i in range(251)}, threshold=0.85)
        self.device = device

    @property
    def class_embed(self):
        return self.model.detr.class_embed

    def __call__(self, image):
        """image: (3, H, W) float RGB in 0..255, as the plugin's input."""
        x = (image / 255.0 - IMAGENET_MEAN.to(image.device)) / IMAGENET_STD.to(image.device)
        outputs = self.model([x])
        size = torch.as_tensor([list(image.shape[-2:])], device=image.device)
        return self.postprocess(outputs, size, size)


class OriginalDetrStage2Step:
    """One stage-2 training step of the original: DETRsegm with the DETR part frozen (as its
    ``--frozen_weights`` does), masks for all queries, SetCriterion with mask losses, AdamW, clipping 0.1."""

    def __init__(self, repo, cfg, device="cpu", seed=0):
        if repo not in sys.path:
            sys.path.insert(0, repo)
        for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
            setattr(torchvision.models, name, _no_download(getattr(torchvision.models, name)))
        from models.detr import build

        torch.manual_seed(seed)
        args = reference_args(cfg)
        args.frozen_weights = "unused"  # masks on; the DETR part is frozen below
        self.model, self.criterion, _ = build(args)
        for p in self.model.detr.parameters():
            p.requires_grad_(False)
        self.model.to(device).train()
        self.criterion.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        self.params = params

    def __call__(self, batch):
        """batch: the plugin's training inputs (uint8 images, Instances with gt_boxes/gt_classes/gt_masks)."""
        from torchvision.ops import box_convert

        images, targets = [], []
        for x in batch:
            img = x["image"].float()
            images.append((img / 255.0 - IMAGENET_MEAN.to(img.device)) / IMAGENET_STD.to(img.device))
            h, w = img.shape[-2:]
            inst = x["instances"]
            boxes = box_convert(inst.gt_boxes.tensor, "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
            targets.append({"labels": inst.gt_classes + 1, "boxes": boxes.to(img.device),
                            "masks": inst.gt_masks.tensor.to(img.device)})
        outputs = self.model(images)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.1)
        self.optimizer.step()
