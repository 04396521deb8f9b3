"""The inference fast paths of a DETR body and its mask head, as one explicit object.

An :class:`InferencePlan` is made from the current weights, once, by an explicit step
(:meth:`DetrPanoptic.prepare_inference <detr_panoptic_d2.modeling.meta_arch.DetrPanoptic>`, which
its inference forward calls), and is never updated. It holds:

* ``backbone``: the backbone with BatchNorm folded into its convolutions, channels-last, in the
  compute dtype (:class:`.inference_opt.FoldedResNet`), for a ``DetrResNet`` of a structure it
  reproduces (other backbones run as they are);
* ``body_params``: at "bf16" / "fp16", a copy of the rest of the body's weights in that dtype (run
  through ``torch.func.functional_call``); the class and box heads, the positional encoding and the
  training-only queries stay float32 (``FP32_BODY_PREFIXES``);
* ``mask_head_weights``: the mask head's weights as its fast kernel reads them
  (``head.inference_weights(dtype)``, for heads that have one).

The model drops its plans whenever its weights may change — ``train()`` / ``eval()``, ``.to()``,
``load_state_dict`` (into the model or any of its modules), an optimizer step on any parameter a
plan was made from — so that a stale copy is never run. Code that writes weights in place by other
means calls ``model.drop_inference_plans()``. Plans are kept beside the model, not in it: they are
not in its ``state_dict``, a deep copy or a pickle.
"""

import logging
import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .backbone import DetrResNet
from .inference_opt import FoldedResNet, bf16_is_fast

logger = logging.getLogger(__name__)

# Parts of the DETR body that run in float32 whatever the precision: the class and box heads (scores
# are thresholded, boxes are outputs), the positional encoding's frequencies and the training-only
# queries.
FP32_BODY_PREFIXES = ("class_embed.", "bbox_embed.", "position_embedding.", "training_queries.")


class InferencePlan:
    """What inference runs instead of the training modules of ``detr`` (a ``DETR`` body) and
    ``mask_head``, made from their weights now.

    Args:
        dtype: the compute dtype (float32, or the bf16 / fp16 of ``MODEL.DETR.TEST.PRECISION``).
        cast_body: run the body (not only the folded backbone) in ``dtype`` from a cast copy of its
            weights. Off for a frozen body under autocast, which casts by itself.
        mask_head: also prepare the mask head's weights (None: no mask head).
    """

    def __init__(self, detr, dtype=torch.float32, cast_body=True, mask_head=None):
        self.dtype = dtype
        self.device = detr.query_embed.weight.device
        with torch.inference_mode(False), torch.no_grad():
            backbone = detr.backbone
            fold = isinstance(backbone, DetrResNet) and FoldedResNet.supports(backbone)
            self.backbone = FoldedResNet(backbone, dtype) if fold else None
            self.body_params = None
            if cast_body and dtype != torch.float32:
                skip = FP32_BODY_PREFIXES + (("backbone.",) if self.backbone is not None else ())
                self.body_params = {
                    n: t.detach().to(dtype) if t.is_floating_point() else t
                    for n, t in [*detr.named_parameters(), *detr.named_buffers()]
                    if not n.startswith(skip)
                }
            self.mask_head_weights = None
            if mask_head is not None and hasattr(mask_head, "inference_weights"):
                self.mask_head_weights = mask_head.inference_weights(dtype)
        modules = [detr] + ([] if mask_head is None else [mask_head])
        # the parameters it was made from (identity of the Parameter objects): an optimizer step on
        # any of them drops the plan
        self.parameter_ids = {id(p) for m in modules for p in m.parameters()}

    def run_body(self, detr, images, padding_mask, targets=None):
        """``DETR.forward``'s ``(outputs, features)`` through this plan: the folded backbone, and at
        reduced precision the image and the body's weights in ``dtype``."""
        if self.body_params is None:
            return detr(images, padding_mask, targets, backbone=self.backbone)
        images = images.to(dtype=self.dtype, memory_format=torch.channels_last)
        return torch.func.functional_call(
            detr,
            self.body_params,
            (images, padding_mask, targets),
            {"backbone": self.backbone},
            strict=False,
        )

    def mask_head_kwargs(self):
        """Keyword arguments of the mask head's call: its prepared weights, when it has them."""
        return {} if self.mask_head_weights is None else {"weights": self.mask_head_weights}


def warn_slow_precision(dtype, device):
    """A one-line warning where ``dtype`` is a supported but slow choice on ``device``."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not bf16_is_fast():
        logger.warning(
            "MODEL.DETR.TEST.PRECISION bf16: this CPU has no native bf16 (AVX512-BF16 / AMX); "
            "inference may be slower than fp32"
        )
    if dtype == torch.float16 and device.type == "cpu":
        logger.warning(
            "MODEL.DETR.TEST.PRECISION fp16 on the CPU: supported, but it may be slower than "
            'fp32 (use "bf16" on a CPU with AVX512-BF16 / AMX)'
        )


def to_float(x):
    """Floating-point tensors of a (nested) dict in float32."""
    if isinstance(x, dict):
        return {k: to_float(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.float()
    return x


# ---- the plans of each model, dropped when its weights may change --------------------------------
_PLANS = weakref.WeakKeyDictionary()  # model → {purpose: InferencePlan}


def plans_of(model):
    """The plans of ``model`` (a dict, purpose → plan; empty when none is made)."""
    return _PLANS.setdefault(model, {})


def drop_plans(model):
    """Forget every plan of ``model``: the next inference makes a new one from its weights."""
    _PLANS.pop(model, None)


def _drop_plans_of_stepped_parameters(optimizer, args, kwargs):
    """Optimizer step post-hook (every optimizer): drop the plans made from a parameter it
    updated."""
    if not _PLANS:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for model in list(_PLANS.keys()):
        plans = _PLANS.get(model, {})
        for purpose in [k for k, plan in plans.items() if plan.parameter_ids & stepped]:
            del plans[purpose]


register_optimizer_step_post_hook(_drop_plans_of_stepped_parameters)
