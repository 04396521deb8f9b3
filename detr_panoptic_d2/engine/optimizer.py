"""DETR's optimizer: AdamW, a lower learning rate for the backbone, full-model gradient clipping."""

import torch
from torch import nn


def _clip_full_model(optimizer_cls, max_norm, norm_type):
    """Subclass of ``optimizer_cls`` whose step() first clips the global gradient norm over all its
    params (DETR's ``clip_grad_norm_(model.parameters(), 0.1)``), rather than per parameter as
    Detectron2 does."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def backbone_module(model):
    """The backbone of ``model`` (unwrapped from DistributedDataParallel / DataParallel):
    ``model.detr.backbone`` (DetrPanoptic), else ``model.backbone``, else None."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    for owner in (getattr(model, "detr", None), model):
        backbone = getattr(owner, "backbone", None)
        if isinstance(backbone, nn.Module):
            return backbone
    return None


def build_detr_optimizer(cfg, model):
    """AdamW (or SGD) over the trainable parameters; the backbone's (the parameters of the module
    :func:`backbone_module` finds, whatever their names) at BASE_LR * BACKBONE_MULTIPLIER."""
    found = backbone_module(model)
    in_backbone = set() if found is None else {id(p) for p in found.parameters()}
    backbone, rest = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (backbone if id(p) in in_backbone else rest).append(p)
    lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    groups = [{"params": rest, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * cfg.SOLVER.BACKBONE_MULTIPLIER})
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"weight_decay": wd}
    elif name == "SGD":
        optimizer_cls, kwargs = (
            torch.optim.SGD,
            {"momentum": cfg.SOLVER.MOMENTUM, "weight_decay": wd},
        )
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE != "full_model":
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}: DETR clips the norm of the "
                "whole model's gradient; use 'full_model'"
            )
        optimizer_cls = _clip_full_model(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    return optimizer_cls(groups, lr=lr, **kwargs)
