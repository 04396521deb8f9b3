"""DETR panoptic meta-architecture for Detectron2: glue between the DETR body, the mask head, the
set criterion and the panoptic post-processing."""

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from ..checkpoint.loading import (
    TRAINING_ONLY_PREFIXES,
    UninitializedParametersError,
    load_detr_body,
    load_submodule,
    to_model_layout,
    uninitialized_message,
)
from ..config import validate_config
from .checks import check_arg
from .criterion import (
    SetCriterion,
    loss_weights,
    stage_losses,
    supervised_aux_layers,
    trains_denoising,
)
from .detr import DETR
from .inference_opt import PRECISIONS
from .inference_plan import InferencePlan, drop_plans, plans_of, to_float, warn_slow_precision
from .mask_head import build_mask_head
from .matcher import HungarianMatcher
from .postprocess import PanopticPostProcessor, thing_classes_from_metadata
from .targets import targets_from_instances


@META_ARCH_REGISTRY.register()
class DetrPanoptic(nn.Module):
    """DETR (``self.detr``) with an optional mask head for panoptic segmentation.

    Training input: Detectron2 dicts with "image" (C, H, W) and "instances" (gt_boxes XYXY absolute,
    gt_classes contiguous, gt_masks for stage 2). Inference output per image: "instances" (boxes,
    scores, classes; masks for thing classes with a mask head), "panoptic_seg" and, with
    ``semantic_on``, "sem_seg" (both with a mask head). Stage 2 (``frozen_weights``): the DETR body
    is loaded from a stage-1 checkpoint, frozen and kept in eval mode; only the mask head trains.
    Inference runs through an :class:`.inference_plan.InferencePlan` at ``test_precision``
    (:meth:`prepare_inference`), made at the first inference forward and dropped whenever the
    weights may change; then one straight path (:meth:`inference`): the body, one selection per
    image, one mask-head call for the batch, the post-processor.

    Partial loads (``load_state_dict(strict=False)``, as Detectron2's checkpointers do, and the
    stage-2 loads above) are recorded: what no load gave a value stays "uninitialized" until the
    model trains (a training forward), and inference with it is an
    :class:`UninitializedParametersError` naming the missing modules and the file (at the first
    inference forward, or at the load itself when the model is in eval mode, as in
    ``DefaultPredictor``). ``weights_name`` (``MODEL.WEIGHTS``) names the file when the loader does
    not (``DetrCheckpointer`` does). A model nothing was loaded into is not checked.
    """

    @configurable
    def __init__(
        self,
        *,
        detr,
        criterion,
        postprocessor,
        pixel_mean,
        pixel_std,
        mask_head=None,
        frozen_weights="",
        mask_head_weights="",
        train_matched_only=True,
        test_precision="fp32",
        weights_name="",
    ):
        super().__init__()
        # state-dict keys no load gave a value, with the load that left them so; None: no load yet
        self._uninitialized = None
        self._weights_name = weights_name
        self.register_load_state_dict_post_hook(_record_load_hook)
        check_arg(
            test_precision in PRECISIONS,
            "DetrPanoptic",
            "test_precision",
            "MODEL.DETR.TEST.PRECISION",
            test_precision,
            "'fp32', 'bf16' or 'fp16'",
        )
        self.test_precision = test_precision
        self.test_dtype = PRECISIONS[test_precision]
        self._warned_precision = False
        self.detr = detr
        self.mask_head = mask_head
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.train_matched_only = train_matched_only
        for module in (self.detr, self.mask_head):  # a load into a part drops the plans too
            if module is not None:
                module.register_load_state_dict_post_hook(self._drop_plans_hook)
        self.frozen = bool(frozen_weights)
        if self.frozen:
            load_detr_body(self.detr, frozen_weights, "MODEL.DETR.FROZEN_WEIGHTS")
            self.detr.requires_grad_(False)
            self._record_partial_load("detr.", f"MODEL.DETR.FROZEN_WEIGHTS {frozen_weights}")
        if mask_head_weights:  # e.g. an official checkpoint's, for fine-tuning on other classes
            key = "MODEL.MASK_HEAD.WEIGHTS"
            load_submodule(self.mask_head, mask_head_weights, "mask_head.", key)
            self._record_partial_load("mask_head.", f"{key} {mask_head_weights}")

    @classmethod
    def from_config(cls, cfg):
        validate_config(cfg)
        d = cfg.MODEL.DETR
        detr = DETR(cfg)
        mask_head = build_mask_head(cfg, detr.backbone.output_shape())
        stage2 = bool(d.FROZEN_WEIGHTS)
        criterion = SetCriterion(
            d.NUM_CLASSES,
            HungarianMatcher(d.COST_CLASS, d.COST_BBOX, d.COST_GIOU),
            loss_weights(d),
            losses=stage_losses(mask_head is not None, stage2),
            num_aux_layers=supervised_aux_layers(d.DEC_LAYERS, d.DEEP_SUPERVISION, stage2),
            eos_coef=d.NO_OBJECT_WEIGHT,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
            denoising=trains_denoising(d.DN.COPIES, stage2),
            batched=d.BATCHED_CRITERION,
        )
        names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        postprocessor = PanopticPostProcessor(
            cfg, thing_classes_from_metadata(names, d.NUM_CLASSES), mask_head is not None
        )
        return {
            "detr": detr,
            "criterion": criterion,
            "postprocessor": postprocessor,
            "mask_head": mask_head,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "frozen_weights": d.FROZEN_WEIGHTS,
            "mask_head_weights": cfg.MODEL.MASK_HEAD.WEIGHTS,
            "train_matched_only": cfg.MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY,
            "test_precision": d.TEST.PRECISION,
            "weights_name": cfg.MODEL.WEIGHTS,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode=True):
        drop_plans(self)  # training (or code between modes) may change the weights
        super().train(mode)
        if self.frozen:  # BatchNorm and dropout of the frozen body stay as in eval
            self.detr.train(False)
        return self

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .float(), ...
        drop_plans(self)
        return super()._apply(fn, *args, **kwargs)

    def _drop_plans_hook(self, module, incompatible_keys):
        drop_plans(self)

    # ---- inference plans -----------------------------------------------------------------------
    def prepare_inference(self):
        """The :class:`.inference_plan.InferencePlan` inference runs (made now from the current
        weights if there is none): the folded backbone, the body at ``MODEL.DETR.TEST.PRECISION``,
        the mask head's prepared weights."""
        plans = plans_of(self)
        plan = plans.get("inference")
        if plan is None or plan.device != self.device:
            if not self._warned_precision:
                warn_slow_precision(self.test_dtype, self.device)
                self._warned_precision = True
            plan = plans["inference"] = InferencePlan(
                self.detr, self.test_dtype, mask_head=self.mask_head
            )
        return plan

    def drop_inference_plans(self):
        """Forget the inference plans (for code that changes weights in place by other means than
        an optimizer step, ``load_state_dict``, ``.to()`` or ``train()``, which drop them)."""
        drop_plans(self)

    def _frozen_body_plan(self):
        """Stage 2: the frozen body's plan (its folded backbone, in autocast's dtype when on)."""
        device = self.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        dtype = dtype or torch.float32
        plans = plans_of(self)
        plan = plans.get("frozen body")
        if plan is None or plan.dtype != dtype or plan.device != self.device:
            plan = plans["frozen body"] = InferencePlan(self.detr, dtype, cast_body=False)
        return plan

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # any loader reads official DETR checkpoints, the earlier layout, another class count
        to_model_layout(state_dict, prefix, self)
        self._state_prefix = prefix  # _record_load_hook reads the missing keys under it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- initialization check ------------------------------------------------------------------
    def _checked_keys(self):
        """The state-dict keys inference reads (training-only queries excluded)."""
        return [
            k for k in self.state_dict(keep_vars=True) if not k.startswith(TRAINING_ONLY_PREFIXES)
        ]

    def record_load(self, missing_keys, source):
        """Record a load from ``source`` (a file, a config key) that gave a value to every
        state-dict key but ``missing_keys`` (this model's names). Keys an earlier load gave a value
        keep it. In eval mode, raises at once if anything is left uninitialized."""
        before = self._uninitialized
        missing = set(missing_keys)
        self._uninitialized = {
            k: source
            for k in self._checked_keys()
            if k in missing and (before is None or k in before)
        }
        if not self.training:
            self.check_initialized()

    def _record_partial_load(self, prefix, source):
        """Record a strict load of the ``prefix`` part of the model only."""
        self.record_load(
            [k for k in self.state_dict(keep_vars=True) if not k.startswith(prefix)], source
        )

    def check_initialized(self):
        """Raise :class:`UninitializedParametersError` if a load left parameters or buffers
        without a value and the model has not trained since."""
        if self._uninitialized:
            raise UninitializedParametersError(
                uninitialized_message(self._uninitialized, list(self.state_dict(keep_vars=True)))
            )

    def preprocess_image(self, batched_inputs):
        """Normalized images padded to a batch, and the padding mask (B, H_pad, W_pad), True on
        padding."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.detr.backbone.size_divisibility)
        mask = torch.ones(
            images.tensor.shape[0], *images.tensor.shape[-2:], dtype=torch.bool, device=self.device
        )
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask

    def forward(self, batched_inputs):
        if not self.training:
            self.check_initialized()
            with torch.inference_mode():
                images, mask = self.preprocess_image(batched_inputs)
                outputs, features = self.run_body(images.tensor, mask)
                return self.inference(batched_inputs, images, outputs, features)
        if self._uninitialized:  # training gives them values: inference may follow
            self._uninitialized = {}
        images, mask = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images)  # denoising queries read them
        if self.frozen:  # stage 2: the frozen body by its plan, without autograd
            with torch.no_grad():
                plan = self._frozen_body_plan()
                outputs, features = plan.run_body(self.detr, images.tensor, mask, targets)
        else:
            outputs, features = self.detr(images.tensor, mask, targets)
        return self.losses(batched_inputs, images, outputs, features, targets)

    # ---- training ------------------------------------------------------------------------------
    def prepare_targets(self, batched_inputs, images):
        """DETR's targets of the batch (:func:`.targets.targets_from_instances`)."""
        return targets_from_instances(batched_inputs, images, self.mask_head is not None)

    def losses(self, batched_inputs, images, outputs, features, targets=None):
        """Match, predict masks for the matched queries, compute the losses with that matching.
        Non-finite outputs are a ``FloatingPointError`` (:func:`check_finite_outputs`) before the
        matcher sees them; non-finite losses are Detectron2's trainer's (it names them)."""
        check_finite_outputs(outputs)
        if targets is None:
            targets = self.prepare_targets(batched_inputs, images)
        indices, matches = self.criterion.match(outputs, targets)  # every layer, one call
        pred_masks = None
        if self.mask_head is not None:
            b, q = self.criterion.matched_query_index(indices)
            if self.train_matched_only:
                pred_masks = self.mask_head(features, b, q)
            else:  # every query, then the matched rows: same losses and gradients, for comparison
                bsz, n = outputs["pred_logits"].shape[:2]
                all_b = torch.arange(bsz, device=b.device).repeat_interleave(n)
                all_q = torch.arange(n, device=q.device).repeat(bsz)
                all_masks = self.mask_head(features, all_b, all_q)  # (B * N, h, w)
                pred_masks = all_masks.view(bsz, n, *all_masks.shape[-2:])[b, q]
        losses, metrics = self.criterion(outputs, targets, indices, pred_masks, matches)
        try:
            storage = get_event_storage()
        except AssertionError:  # outside an EventStorage: metrics are not recorded
            storage = None
        if storage is not None and metrics:
            # one host sync for all the metrics: stacked on the device, then copied at once
            values = torch.stack(
                [torch.as_tensor(v, device=self.device).detach().float() for v in metrics.values()]
            )
            storage.put_scalars(**dict(zip(metrics, values.tolist())))
        return losses

    # ---- inference -----------------------------------------------------------------------------
    def run_body(self, images, padding_mask):
        """The DETR body at inference (:meth:`prepare_inference`'s plan): ``(outputs, features)``;
        features in float32 for a mask head that does not take reduced precision."""
        outputs, features = self.prepare_inference().run_body(self.detr, images, padding_mask)
        if self.mask_head is not None and not getattr(
            self.mask_head, "supports_low_precision", False
        ):
            features = to_float(features)
        return outputs, features

    def select(self, outputs, features):
        """One :class:`.postprocess.QuerySelection` per image, chosen once; with a mask head, the
        masks of every image's queries that an output reads, computed in one mask-head call for
        the batch (a constant number of host syncs, not a few per image), are put into them."""
        selections = [self.postprocessor.select(lg) for lg in outputs["pred_logits"]]
        if self.mask_head is None:
            return selections
        need = torch.stack([s.needs_mask for s in selections])  # (B, N)
        batch_idx, queries = need.nonzero(as_tuple=True)  # image by image, queries ascending
        kwargs = self.prepare_inference().mask_head_kwargs()
        masks = self.mask_head(features, batch_idx, queries, **kwargs)
        counts = need.sum(1).tolist()
        for s, q, m in zip(selections, queries.split(counts), masks.split(counts)):
            s.attach_masks(q, m)
        return selections

    def inference(self, batched_inputs, images, outputs, features):
        """Per image, the post-processor's results from :meth:`select`'s selections."""
        selections = self.select(outputs, features)
        results = []
        for b, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(
                self.postprocessor(
                    selections[b],
                    outputs["pred_logits"][b],
                    outputs["pred_boxes"][b],
                    images.tensor.shape[-2:],
                    image_size,
                    out_size,
                )
            )
        return results


def _record_load_hook(module, incompatible_keys):
    """``load_state_dict`` post-hook of :class:`DetrPanoptic`: records the keys the load left
    missing (:meth:`DetrPanoptic.record_load`), naming the file the checkpointer set, or
    MODEL.WEIGHTS."""
    prefix = getattr(module, "_state_prefix", "")
    missing = [k[len(prefix) :] for k in incompatible_keys.missing_keys if k.startswith(prefix)]
    source = getattr(module, "_checkpoint_source", None)
    if source is None:
        source = (
            f"{module._weights_name} (MODEL.WEIGHTS)"
            if module._weights_name
            else "the loaded state dict"
        )
    module.record_load(missing, source)


def named_float_outputs(outputs, prefix=""):
    """(name, tensor) of every floating-point tensor of a (nested) outputs dict: at each level its
    tensors, then its lists (the auxiliary layers), then its dicts (training-only queries):
    "pred_logits", "pred_boxes", "aux_outputs[0].pred_logits", ..., "dn_outputs.pred_logits"."""

    def kind(item):
        return 0 if isinstance(item[1], torch.Tensor) else 1 if isinstance(item[1], list) else 2

    for key, value in sorted(outputs.items(), key=kind):
        name = prefix + key
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                yield name, value
        elif isinstance(value, dict):
            yield from named_float_outputs(value, name + ".")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from named_float_outputs(item, f"{name}[{i}].")


def check_finite_outputs(outputs):
    """Raise ``FloatingPointError`` naming the iteration (in an EventStorage) and the first
    non-finite entry of ``outputs`` (DETR's outputs dict). One host sync: the finiteness of every
    entry is reduced on the device to one flag; names are looked at only on failure."""
    named = list(named_float_outputs(outputs))
    if not named:
        return
    finite = torch.stack([t.isfinite().all() for _, t in named])
    if bool(finite.all()):
        return
    name = named[finite.tolist().index(False)][0]
    try:
        where = f" at iteration={get_event_storage().iter}"
    except AssertionError:  # outside an EventStorage
        where = ""
    raise FloatingPointError(
        f"Model output {name} is infinite or NaN{where} (before matching): the training "
        "diverged, or the weights hold NaN/Inf (a bad checkpoint?). The last checkpoint written "
        "before this iteration is the last good one."
    )
