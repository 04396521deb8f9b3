"""DETR's set criterion: Hungarian-matched classification, box and mask losses."""

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from .box_ops import cxcywh_to_xyxy
from .inference_opt import autocast_off


def dice_loss(inputs, targets, num_boxes):
    """DETR's dice loss. inputs: (K, P) logits; targets: (K, P) in {0, 1}. Sum over K /
    num_boxes."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss averaged over pixels, summed over masks, divided by num_boxes (as
    DETR)."""
    loss = sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.mean(1).sum() / num_boxes


def loss_weights(detr_cfg):
    """``SetCriterion``'s ``weight_dict`` from ``cfg.MODEL.DETR``."""
    d = detr_cfg
    return {
        "loss_ce": d.CLASS_WEIGHT,
        "loss_bbox": d.L1_WEIGHT,
        "loss_giou": d.GIOU_WEIGHT,
        "loss_mask": d.MASK_WEIGHT,
        "loss_dice": d.DICE_WEIGHT,
    }


def stage_losses(has_masks, stage2):
    """The losses a stage trains: the masks only in stage 2 (the body frozen), else labels and
    boxes, and masks with a mask head."""
    if stage2:
        return ("masks",)
    return ("labels", "boxes") + (("masks",) if has_masks else ())


def supervised_aux_layers(num_decoder_layers, deep_supervision, stage2):
    """Auxiliary decoder layers the criterion supervises: every earlier one with deep supervision,
    none in stage 2."""
    return num_decoder_layers - 1 if deep_supervision and not stage2 else 0


def trains_denoising(dn_copies, stage2):
    """Whether the criterion trains denoising queries: with copies, not in stage 2."""
    return dn_copies > 0 and not stage2


class SetCriterion(nn.Module):
    """Losses of DETR given a Hungarian matching of queries to targets.

    ``losses`` selects what is trained: ``"labels"`` (``loss_ce``: cross-entropy with a reduced
    no-object weight), ``"boxes"`` (``loss_bbox``: L1 on normalized cxcywh, and ``loss_giou``) and
    ``"masks"`` (``loss_mask``: sigmoid focal, and ``loss_dice``, on the matched queries' masks).
    Box and mask losses are normalized by the number of target boxes averaged over all workers.
    With ``num_aux_layers`` L, the labels and boxes losses are also computed for each earlier
    decoder layer (matched on its own predictions) under the suffix ``_0`` .. ``_{L-1}``.
    ``weight_dict`` holds the weights of the base keys; ``self.weight_dict`` is its expansion to
    every returned key, made once here.

    Diagnostics are returned apart from the losses, as metrics: ``class_error`` and
    ``cardinality_error``, and, when labels and boxes are not trained (stage 2: frozen detector),
    the last layer's class and box losses.

    Training-only queries (:mod:`.training_queries`), when the outputs hold them:

    * ``outputs["group_outputs"]`` (Group DETR): G - 1 extra query groups, each matched
      one-to-one on its own; each labels / boxes loss (and its auxiliary copies) becomes the mean
      over the G groups, which is the loss over all G x N queries normalized by G x the target
      count (Group DETR's). Keys and weights are unchanged; the metrics stay those of DETR's
      queries (group 0).
    * ``outputs["dn_outputs"]`` (DN-DETR), with ``denoising``: each denoising slot is trained to
      give its target's class (cross-entropy over the slots) and box (L1 and GIoU, normalized by
      the target count x the number of copies), as ``loss_ce_dn``, ``loss_bbox_dn``,
      ``loss_giou_dn`` (``_dn_{i}`` for the auxiliary layers), with the weights of the matching
      losses; metric ``class_error_dn``.
    """

    LOSS_KEYS = {
        "labels": ("loss_ce",),
        "boxes": ("loss_bbox", "loss_giou"),
        "masks": ("loss_mask", "loss_dice"),
    }

    def __init__(
        self,
        num_classes,
        matcher,
        weight_dict,
        losses=("labels", "boxes"),
        num_aux_layers=0,
        eos_coef=0.1,
        focal_alpha=0.25,
        focal_gamma=2.0,
        denoising=False,
    ):
        super().__init__()
        unknown = set(losses) - set(self.LOSS_KEYS)
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown losses {sorted(unknown)}; known: {sorted(self.LOSS_KEYS)}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.losses = tuple(losses)
        self.num_aux_layers = num_aux_layers
        self.eos_coef = eos_coef
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.denoising = denoising
        keys = [k for loss in self.losses for k in self.LOSS_KEYS[loss]]
        aux = [k for loss in self.losses if loss != "masks" for k in self.LOSS_KEYS[loss]]
        self.weight_dict = {k: weight_dict[k] for k in keys}
        self.weight_dict.update(
            {f"{k}_{i}": weight_dict[k] for i in range(num_aux_layers) for k in aux}
        )
        if denoising:
            self.weight_dict.update({f"{k}_dn": weight_dict[k] for k in aux})
            self.weight_dict.update(
                {f"{k}_dn_{i}": weight_dict[k] for i in range(num_aux_layers) for k in aux}
            )
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer(
            "empty_weight", empty_weight, persistent=False
        )  # from the config, not checkpoints

    @staticmethod
    def matched_query_index(indices):
        """(batch_idx (K,), query_idx (K,)) of the matched queries, image by image in matching
        order."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]  # (B, N, K+1)
        idx = self.matched_query_index(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[idx] = target_classes_o.to(logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        idx = self.matched_query_index(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        return self.box_losses(src_boxes, target_boxes, num_boxes)

    @staticmethod
    def box_losses(src_boxes, target_boxes, num_boxes):
        """L1 and GIoU losses of paired (K, 4) normalized cxcywh boxes, summed / num_boxes."""
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(target_boxes))
        )
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_masks(self, pred_masks, targets, indices, num_boxes):
        """pred_masks: (K, h, w) mask logits of the matched queries in ``matched_query_index``
        order, bilinearly upsampled here to the padded target size; the losses in float32."""
        pred_masks = pred_masks.to(torch.promote_types(pred_masks.dtype, torch.float32))
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(
            pred_masks
        )
        if pred_masks.shape[0] == 0:
            zero = pred_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src_masks = F.interpolate(
            pred_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0].flatten(1)
        target_masks = target_masks.flatten(1)
        return {
            "loss_mask": focal_loss(
                src_masks, target_masks, num_boxes, self.focal_alpha, self.focal_gamma
            ),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    @torch.no_grad()
    def metrics(self, outputs, targets, indices):
        logits = outputs["pred_logits"]
        idx = self.matched_query_index(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        if target_classes_o.numel():
            acc = (logits[idx].argmax(-1) == target_classes_o).float().mean() * 100
            class_error = 100 - acc
        else:
            class_error = torch.zeros((), device=logits.device)
        tgt_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        cardinality_error = F.l1_loss(card_pred.float(), tgt_lengths.float())
        return {"class_error": class_error, "cardinality_error": cardinality_error}

    def num_boxes(self, targets, device):
        """Number of target boxes averaged over all workers, at least 1."""
        num = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num)
        return torch.clamp(num / comm.get_world_size(), min=1).item()

    def _detection_losses(self, outputs, targets, indices, num_boxes):
        out = {}
        if "labels" in self.losses:
            out.update(self.loss_labels(outputs, targets, indices, num_boxes))
        if "boxes" in self.losses:
            out.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return out

    def _with_groups(self, losses, group, group_layer, targets, num_boxes):
        """``losses`` of DETR's queries → their mean with the losses of the ``group`` outputs' extra
        query groups (``group_layer``: that layer's outputs), each group matched on its own."""
        k = group["groups"]
        indices = self.matcher(group_layer, targets, groups=k)
        extra = self._detection_losses(group_layer, targets, indices, num_boxes * k)
        return {name: (v + k * extra[name]) / (k + 1) for name, v in losses.items()}

    @staticmethod
    def denoising_targets(dn, targets):
        """The slots of the ``dn`` outputs that hold a target, and their targets: (batch index,
        slot index) into the (B, D * P) slot axis, labels and boxes. Slot c * P + j of image b is
        copy c of target j of image b."""
        valid = dn["dn_valid"]  # (B, P)
        bsz, slots = valid.shape
        labels = torch.zeros(bsz, slots, dtype=torch.int64, device=valid.device)
        boxes = torch.zeros(bsz, slots, 4, device=valid.device)
        for i, t in enumerate(targets):
            n = len(t["labels"])
            labels[i, :n] = t["labels"].to(valid.device)
            boxes[i, :n] = t["boxes"].to(boxes)
        b, s = valid.repeat(1, dn["dn_copies"]).nonzero(as_tuple=True)
        return b, s, labels[b, s % slots], boxes[b, s % slots]

    def loss_denoising(self, layer, b, s, labels, boxes, num_dn):
        """Class and box losses of one layer's denoising slots (b, s) against their targets."""
        if b.numel() == 0:
            zero = layer["pred_logits"].sum() * 0.0 + layer["pred_boxes"].sum() * 0.0
            return {"loss_ce_dn": zero, "loss_bbox_dn": zero, "loss_giou_dn": zero}
        logits = layer["pred_logits"][b, s]
        src = layer["pred_boxes"][b, s]
        labels, boxes = labels.to(logits.device), boxes.to(src)
        out = {"loss_ce_dn": F.cross_entropy(logits, labels, self.empty_weight)}
        out.update({f"{k}_dn": v for k, v in self.box_losses(src, boxes, num_dn).items()})
        return out

    def _denoising_losses(self, dn, targets, num_boxes, metrics):
        b, s, labels, boxes = self.denoising_targets(dn, targets)
        num_dn = num_boxes * dn["dn_copies"]
        out = self.loss_denoising(dn, b, s, labels, boxes, num_dn)
        for i, aux in enumerate(dn["aux_outputs"][: self.num_aux_layers]):
            aux_losses = self.loss_denoising(aux, b, s, labels, boxes, num_dn)
            out.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        with torch.no_grad():
            if b.numel():
                pred = dn["pred_logits"][b, s].argmax(-1)
                metrics["class_error_dn"] = 100 - (pred == labels.to(pred)).float().mean() * 100
        return out

    def forward(self, outputs, targets, indices, pred_masks=None):
        """Returns (weighted losses, metrics).

        outputs: "pred_logits" (B, N, K+1), "pred_boxes" (B, N, 4), optional "aux_outputs" (list
        of dicts of logits and boxes), optional training-only "group_outputs" / "dn_outputs".
        targets: list of dicts with "labels", "boxes" (normalized cxcywh) and, for mask losses,
        "masks" (T, H_pad, W_pad). indices: the matching of the last layer,
        ``self.matcher(outputs, targets)``. pred_masks: (K, h, w) mask logits of the matched
        queries (``matched_query_index`` order), required when "masks" is among the losses.
        Computed in float32 under mixed-precision training (autocast off) too.
        """
        with autocast_off(outputs["pred_logits"].device.type):
            return self._losses_and_metrics(outputs, targets, indices, pred_masks)

    def _losses_and_metrics(self, outputs, targets, indices, pred_masks):
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        raw = self._detection_losses(outputs, targets, indices, num_boxes)
        group = outputs.get("group_outputs") if raw else None
        if group is not None:
            raw = self._with_groups(raw, group, group, targets, num_boxes)
        if "masks" in self.losses:
            if pred_masks is None:
                raise ValueError("SetCriterion: mask losses need pred_masks of the matched queries")
            raw.update(self.loss_masks(pred_masks, targets, indices, num_boxes))
        for i, aux in enumerate(outputs.get("aux_outputs", [])[: self.num_aux_layers]):
            aux_losses = self._detection_losses(aux, targets, self.matcher(aux, targets), num_boxes)
            if group is not None:
                aux_losses = self._with_groups(
                    aux_losses, group, group["aux_outputs"][i], targets, num_boxes
                )
            raw.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        metrics = self.metrics(outputs, targets, indices)
        if self.denoising and "dn_outputs" in outputs:
            raw.update(self._denoising_losses(outputs["dn_outputs"], targets, num_boxes, metrics))
        if "labels" not in self.losses:  # frozen detector: its losses are diagnostics
            with torch.no_grad():
                metrics.update(self.loss_labels(outputs, targets, indices, num_boxes))
                metrics.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return {k: v * self.weight_dict[k] for k, v in raw.items()}, metrics
