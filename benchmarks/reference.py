"""The original DETR implementation, from a local checkout given by the user, on the plugin's
weights.

Nothing of the original is shipped here: ``--reference-repo`` points at a clone of the original DETR
repository, and the benchmarks import this module in a child process whose ``PYTHONPATH`` holds that
clone (:func:`reference_env`). The original's model is assembled from its own classes with a
torchvision ResNet of random weights (its ``build()`` would download ImageNet weights); its state
dict is converted with this plugin's converter and loaded into the plugin's model, so that both run
on the same weights.
"""

import os
from types import SimpleNamespace

import torch
import torchvision

from detr_panoptic_d2.checkpoint import convert_detr_state_dict

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def reference_env(repo):
    """Environment of a child process that imports the original from ``repo`` (and this benchmarks
    folder)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([os.path.abspath(repo), here, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path)


def reference_args(cfg, masks=True):
    d = cfg.MODEL.DETR
    return SimpleNamespace(
        hidden_dim=d.HIDDEN_DIM,
        nheads=d.NHEADS,
        enc_layers=d.ENC_LAYERS,
        dec_layers=d.DEC_LAYERS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dropout=d.DROPOUT,
        pre_norm=d.PRE_NORM,
        num_queries=d.NUM_OBJECT_QUERIES,
        backbone=f"resnet{cfg.MODEL.RESNETS.DEPTH}",
        dilation=cfg.MODEL.RESNETS.RES5_DILATION == 2,
        masks=masks,
        aux_loss=d.DEEP_SUPERVISION,
        position_embedding="sine",
        eos_coef=d.NO_OBJECT_WEIGHT,
        set_cost_class=d.COST_CLASS,
        set_cost_bbox=d.COST_BBOX,
        set_cost_giou=d.COST_GIOU,
        bbox_loss_coef=d.L1_WEIGHT,
        giou_loss_coef=d.GIOU_WEIGHT,
        mask_loss_coef=d.MASK_WEIGHT,
        dice_loss_coef=d.DICE_WEIGHT,
    )


def build_original(args, freeze_detr=False):
    """The original DETR (``DETRsegm`` with ``args.masks``) with random weights, as its ``build()``
    assembles it."""
    from models.backbone import BackboneBase, FrozenBatchNorm2d, Joiner
    from models.detr import DETR
    from models.position_encoding import build_position_encoding
    from models.segmentation import DETRsegm
    from models.transformer import build_transformer

    resnet = getattr(torchvision.models, args.backbone)(
        weights=None,
        replace_stride_with_dilation=[False, False, args.dilation],
        norm_layer=FrozenBatchNorm2d,
    )
    num_channels = 512 if args.backbone in ("resnet18", "resnet34") else 2048
    backbone = Joiner(
        BackboneBase(resnet, True, num_channels, args.masks), build_position_encoding(args)
    )
    backbone.num_channels = num_channels
    detr = DETR(
        backbone,
        build_transformer(args),
        num_classes=250,
        num_queries=args.num_queries,
        aux_loss=args.aux_loss,
    )
    return DETRsegm(detr, freeze_detr=freeze_detr) if args.masks else detr


class OriginalDetrPanoptic:
    """The original DETRsegm + PostProcessPanoptic (threshold 0.85), random weights."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, cfg, device="cpu", seed=0):
        from models.segmentation import PostProcessPanoptic

        torch.manual_seed(seed)
        self.model = build_original(reference_args(cfg)).to(device).eval()
        self.postprocess = PostProcessPanoptic({i: i <= 90 for i in range(251)}, threshold=0.85)

    def copy_weights_to(self, plugin_model):
        """Load these weights, converted by the plugin's converter, into ``plugin_model``."""
        state, _ = convert_detr_state_dict(self.model.state_dict(), "coco_panoptic")
        plugin_model.load_state_dict(state, strict=True)

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
    ``--frozen_weights`` does), masks for all queries, SetCriterion with mask losses, AdamW,
    clipping 0.1."""

    def __init__(self, cfg, device="cpu", seed=0):
        from models.detr import SetCriterion
        from models.matcher import build_matcher

        torch.manual_seed(seed)
        args = reference_args(cfg)
        self.model = build_original(args, freeze_detr=True).to(device).train()
        weights = {
            "loss_ce": 1,
            "loss_bbox": args.bbox_loss_coef,
            "loss_giou": args.giou_loss_coef,
            "loss_mask": args.mask_loss_coef,
            "loss_dice": args.dice_loss_coef,
        }
        if args.aux_loss:
            weights.update(
                {
                    f"{k}_{i}": v
                    for i in range(args.dec_layers - 1)
                    for k, v in list(weights.items())
                }
            )
        self.criterion = (
            SetCriterion(
                250,
                build_matcher(args),
                weights,
                args.eos_coef,
                ["labels", "boxes", "cardinality", "masks"],
            )
            .to(device)
            .train()
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )

    def __call__(self, batch):
        """batch: the plugin's training inputs (uint8 images, Instances with
        gt_boxes/gt_classes/gt_masks)."""
        from torchvision.ops import box_convert

        images, targets = [], []
        for x in batch:
            img = x["image"].float()
            images.append(
                (img / 255.0 - IMAGENET_MEAN.to(img.device)) / IMAGENET_STD.to(img.device)
            )
            h, w = img.shape[-2:]
            inst = x["instances"]
            boxes = box_convert(inst.gt_boxes.tensor, "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
            targets.append(
                {
                    "labels": inst.gt_classes + 1,
                    "boxes": boxes.to(img.device),
                    "masks": inst.gt_masks.tensor.to(img.device),
                }
            )
        outputs = self.model(images)
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.1)
        self.optimizer.step()
