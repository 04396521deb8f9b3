"""DETR's optimizer: AdamW, a lower learning rate for the backbone, full-model gradient clipping."""

import logging

import torch
from torch import nn

from ..config import OPTIMIZER_IMPLS

logger = logging.getLogger(__name__)

# SOLVER.OPTIMIZER_IMPL → the torch optimizer's keyword arguments
IMPL_KWARGS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "for-loop": {"foreach": False},
}


def _clip_full_model(optimizer_cls, max_norm, norm_type):
    """Subclass of ``optimizer_cls`` whose step() first clips the global gradient norm over all its
    params (DETR's ``clip_grad_norm_(model.parameters(), 0.1)``), rather than per parameter as
    Detectron2 does. A gradient scaler unscales the gradients before step() (also for a fused
    optimizer, which would take them scaled), so that the true gradients are clipped."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._step_supports_amp_scaling = False

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
    clip = cfg.SOLVER.CLIP_GRADIENTS
    return make_optimizer(
        groups,
        lr=lr,
        weight_decay=wd,
        name=cfg.SOLVER.OPTIMIZER,
        momentum=cfg.SOLVER.MOMENTUM,
        clip_gradients={
            "enabled": clip.ENABLED,
            "clip_type": clip.CLIP_TYPE,
            "clip_value": clip.CLIP_VALUE,
            "norm_type": clip.NORM_TYPE,
        },
        impl=cfg.SOLVER.OPTIMIZER_IMPL,
    )


def make_optimizer(
    params, *, lr, weight_decay, name="ADAMW", momentum=0.9, clip_gradients=None, impl="fused"
):
    """The optimizer of both config worlds: AdamW (or SGD with ``momentum``) over ``params`` (a
    list of parameter groups); with ``clip_gradients`` (``enabled``, ``clip_type`` "full_model",
    ``clip_value``, ``norm_type``: ``SOLVER.CLIP_GRADIENTS``) the whole model's gradient norm
    clipped before each step; ``impl``: ``SOLVER.OPTIMIZER_IMPL``."""
    if name.upper() == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {"weight_decay": weight_decay}
    elif name.upper() == "SGD":
        optimizer_cls, kwargs = (
            torch.optim.SGD,
            {"momentum": momentum, "weight_decay": weight_decay},
        )
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {name!r}")
    clip = dict(clip_gradients or {"enabled": False})
    if clip.get("enabled", False):
        if clip.get("clip_type", "full_model") != "full_model":
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip['clip_type']!r}: DETR clips the norm of "
                "the whole model's gradient; use 'full_model'"
            )
        optimizer_cls = _clip_full_model(
            optimizer_cls, clip.get("clip_value", 0.1), clip.get("norm_type", 2.0)
        )
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"SOLVER.OPTIMIZER_IMPL must be one of {OPTIMIZER_IMPLS}, got {impl!r}")
    try:
        optimizer = optimizer_cls(params, lr=lr, **kwargs, **IMPL_KWARGS.get(impl, {}))
    except RuntimeError as e:  # no fused kernel for these parameters' device or dtype
        if impl != "fused":
            raise
        logger.warning(f"SOLVER.OPTIMIZER_IMPL fused is not available here ({e}): using foreach")
        optimizer = optimizer_cls(params, lr=lr, **kwargs, foreach=True)
    optimizer.register_load_state_dict_pre_hook(_keep_implementation)
    return optimizer


def _keep_implementation(optimizer, state_dict):
    """``load_state_dict`` pre-hook: the loaded parameter groups keep this optimizer's
    implementation (fused / foreach flags), whichever the checkpoint's optimizer had."""
    flags = {k: optimizer.defaults[k] for k in ("fused", "foreach") if k in optimizer.defaults}
    groups = [{**g, **flags} for g in state_dict["param_groups"]]
    return {**state_dict, "param_groups": groups}
