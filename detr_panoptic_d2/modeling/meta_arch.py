"""DETR panoptic meta-architecture for Detectron2: glue between the DETR body, the mask head, the
set criterion and the panoptic post-processing."""

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn

from ..checkpoint.loading import load_detr_body, load_submodule, rename_legacy_keys
from ..config import validate_config
from .criterion import SetCriterion
from .detr import DETR
from .inference_opt import InferenceRunner
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
    Inference runs at ``test_precision`` (:class:`.inference_opt.InferenceRunner`).
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
    ):
        super().__init__()
        # inference at MODEL.DETR.TEST.PRECISION (a reduced-precision weight copy, not a module)
        self.inference_runner = InferenceRunner(test_precision)
        self.detr = detr
        self.mask_head = mask_head
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.train_matched_only = train_matched_only
        self.frozen = bool(frozen_weights)
        if self.frozen:
            load_detr_body(self.detr, frozen_weights, "MODEL.DETR.FROZEN_WEIGHTS")
            self.detr.requires_grad_(False)
        if mask_head_weights:  # e.g. an official checkpoint's, for fine-tuning on other classes
            key = "MODEL.MASK_HEAD.WEIGHTS"
            load_submodule(self.mask_head, mask_head_weights, "mask_head.", key)

    @classmethod
    def from_config(cls, cfg):
        validate_config(cfg)
        d = cfg.MODEL.DETR
        detr = DETR(cfg)
        mask_head = build_mask_head(cfg, detr.backbone.output_shape())
        stage2 = bool(d.FROZEN_WEIGHTS)
        weights = {
            "loss_ce": d.CLASS_WEIGHT,
            "loss_bbox": d.L1_WEIGHT,
            "loss_giou": d.GIOU_WEIGHT,
            "loss_mask": d.MASK_WEIGHT,
            "loss_dice": d.DICE_WEIGHT,
        }
        criterion = SetCriterion(
            d.NUM_CLASSES,
            HungarianMatcher(d.COST_CLASS, d.COST_BBOX, d.COST_GIOU),
            weights,
            losses=("masks",)
            if stage2
            else ("labels", "boxes") + (("masks",) if mask_head else ()),
            num_aux_layers=d.DEC_LAYERS - 1 if d.DEEP_SUPERVISION and not stage2 else 0,
            eos_coef=d.NO_OBJECT_WEIGHT,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
            denoising=d.DN.COPIES > 0 and not stage2,
        )
        names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        postprocessor = PanopticPostProcessor.from_config(
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
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode=True):
        super().train(mode)
        if self.frozen:  # BatchNorm and dropout of the frozen body stay as in eval
            self.detr.train(False)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the DETR body had its own module
        rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
            with torch.inference_mode():
                images, mask = self.preprocess_image(batched_inputs)
                outputs, features = self.inference_runner(
                    self.detr, images.tensor, mask, self.mask_head
                )
                return self.inference(batched_inputs, images, outputs, features)
        images, mask = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images)  # denoising queries read them
        with torch.set_grad_enabled(not self.frozen):
            outputs, features = self.detr(images.tensor, mask, targets)
        return self.losses(batched_inputs, images, outputs, features, targets)

    # ---- training ------------------------------------------------------------------------------
    def prepare_targets(self, batched_inputs, images):
        """DETR's targets of the batch (:func:`.targets.targets_from_instances`)."""
        return targets_from_instances(batched_inputs, images, self.mask_head is not None)

    def losses(self, batched_inputs, images, outputs, features, targets=None):
        """Match, predict masks for the matched queries, compute the losses with that matching."""
        if targets is None:
            targets = self.prepare_targets(batched_inputs, images)
        indices = self.criterion.matcher(outputs, targets)
        pred_masks = None
        if self.mask_head is not None:
            b, q = self.criterion.matched_query_index(indices)
            if self.train_matched_only:
                pred_masks = self.mask_head(features, b, q)
            else:  # every query, then the matched rows: same losses and gradients, for comparison
                bsz, n = outputs["pred_logits"].shape[:2]
                all_b, all_q = torch.arange(bsz).repeat_interleave(n), torch.arange(n).repeat(bsz)
                all_masks = self.mask_head(features, all_b.to(b), all_q.to(q))  # (B * N, h, w)
                pred_masks = all_masks.view(bsz, n, *all_masks.shape[-2:])[b, q]
        losses, metrics = self.criterion(outputs, targets, indices, pred_masks)
        try:
            get_event_storage().put_scalars(**{k: float(v) for k, v in metrics.items()})
        except AssertionError:  # outside an EventStorage: metrics are not recorded
            pass
        return losses

    # ---- inference -----------------------------------------------------------------------------
    def inference(self, batched_inputs, images, outputs, features):
        results = []
        for b, (x, image_size) in enumerate(zip(batched_inputs, images.image_sizes)):
            logits, boxes = outputs["pred_logits"][b], outputs["pred_boxes"][b]
            mask_logits = None
            if self.mask_head is not None:
                # mask logits only for the queries that can reach an output (sorted query indices)
                queries = self.postprocessor.queries_needing_masks(logits).nonzero()[:, 0]
                mask_logits = self.mask_head(features, torch.full_like(queries, b), queries)
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(
                self.postprocessor(
                    logits, boxes, mask_logits, images.tensor.shape[-2:], image_size, out_size
                )
            )
        return results
