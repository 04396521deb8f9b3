"""DETR's set criterion: Hungarian-matched classification, box and mask losses."""

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from .box_ops import cxcywh_to_xyxy
from .checks import check_arg
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


def paired_giou(boxes1, boxes2):
    """Generalized IoU of paired (..., 4) xyxy boxes: torchvision's ``generalized_box_iou`` of each
    pair (the same operations, element by element), without the matrix of all pairs."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    wh = torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])
    wh = wh.clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    whi = torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])
    whi = whi.clamp(min=0)
    areai = whi[..., 0] * whi[..., 1]
    return inter / union - (areai - union) / areai


# SetCriterion's weight_dict keys → their YAML keys
LOSS_WEIGHT_KEYS = {
    "loss_ce": "CLASS_WEIGHT",
    "loss_bbox": "L1_WEIGHT",
    "loss_giou": "GIOU_WEIGHT",
    "loss_mask": "MASK_WEIGHT",
    "loss_dice": "DICE_WEIGHT",
}


def loss_weights(detr_cfg):
    """``SetCriterion``'s ``weight_dict`` from ``cfg.MODEL.DETR``."""
    return {k: detr_cfg[key] for k, key in LOSS_WEIGHT_KEYS.items()}


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

    With ``batched`` (the default), the labels, boxes and denoising losses of every supervised layer
    are computed at once on the stacked layers (one set of operations for all of them), and
    :meth:`match` matches every layer and query group in one matcher call (one copy of the costs to
    the host). The losses are the per-layer ones (equal up to float rounding: the sums run in
    another order); ``batched=False`` computes them layer by layer, one matcher call each.
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
        batched=True,
    ):
        super().__init__()
        unknown = set(losses) - set(self.LOSS_KEYS)
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown losses {sorted(unknown)}; known: {sorted(self.LOSS_KEYS)}"
            )
        for k, w in weight_dict.items():
            key = "MODEL.DETR." + LOSS_WEIGHT_KEYS.get(k, k)
            check_arg(w >= 0, "SetCriterion", f"weight_dict[{k!r}]", key, w, ">= 0")
        check_arg(
            eos_coef > 0, "SetCriterion", "eos_coef", "MODEL.DETR.NO_OBJECT_WEIGHT", eos_coef, "> 0"
        )
        self.num_classes = num_classes
        self.matcher = matcher
        self.losses = tuple(losses)
        self.num_aux_layers = num_aux_layers
        self.eos_coef = eos_coef
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.denoising = denoising
        self.batched = batched
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
        """Number of target boxes averaged over all workers, at least 1 (on the host: a device
        copy and a host sync only with several workers, for their all-reduce)."""
        num = float(sum(len(t["labels"]) for t in targets))
        if comm.get_world_size() == 1:
            return max(num, 1.0)
        total = torch.as_tensor([num], device=device)
        torch.distributed.all_reduce(total)
        return torch.clamp(total / comm.get_world_size(), min=1).item()

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

    def forward(self, outputs, targets, indices, pred_masks=None, matches=None):
        """Returns (weighted losses, metrics).

        outputs: "pred_logits" (B, N, K+1), "pred_boxes" (B, N, 4), optional "aux_outputs" (list
        of dicts of logits and boxes), optional training-only "group_outputs" / "dn_outputs".
        targets: list of dicts with "labels", "boxes" (normalized cxcywh) and, for mask losses,
        "masks" (T, H_pad, W_pad). indices: the matching of the last layer,
        ``self.matcher(outputs, targets)``. pred_masks: (K, h, w) mask logits of the matched
        queries (``matched_query_index`` order), required when "masks" is among the losses.
        matches: with ``batched``, :meth:`match`'s matches of every layer (else the other layers
        are matched here, one matcher call each). Computed in float32 under mixed-precision
        training (autocast off) too.
        """
        with autocast_off(outputs["pred_logits"].device.type):
            if self.batched:
                return self._batched_losses_and_metrics(
                    outputs, targets, indices, pred_masks, matches
                )
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

    # ---- every layer at once (``batched``) -----------------------------------------------------
    def _trains_detection(self):
        return "labels" in self.losses or "boxes" in self.losses

    def _stack_layers(self, outputs):
        """Logits (L, B, G * N, K+1) and boxes (L, B, G * N, 4) of the supervised layers (the
        auxiliary ones, then the last), the extra query groups' queries after DETR's; and G."""
        layers = [*outputs.get("aux_outputs", [])[: self.num_aux_layers], outputs]
        group = outputs.get("group_outputs")
        if group is not None:
            extra = [*group["aux_outputs"][: self.num_aux_layers], group]
            keys = ("pred_logits", "pred_boxes")
            layers = [{k: torch.cat([o[k], g[k]], 1) for k in keys} for o, g in zip(layers, extra)]
        logits = torch.stack([o["pred_logits"] for o in layers])
        boxes = torch.stack([o["pred_boxes"] for o in layers])
        return logits, boxes, 1 if group is None else group["groups"] + 1

    def match(self, outputs, targets):
        """(indices, matches): ``indices``, the last layer's matching of DETR's queries
        (``self.matcher(outputs, targets)``'s per-image pairs); ``matches``, for ``forward``, with
        ``batched`` and a matcher with ``match_layers``: the (4, M) matches of every supervised
        layer and query group, made in that one matcher call (:meth:`HungarianMatcher.match_layers`
        on :meth:`_stack_layers`), else None."""
        if not (
            self.batched and self._trains_detection() and hasattr(self.matcher, "match_layers")
        ):
            return self.matcher(outputs, targets), None
        logits, boxes, groups = self._stack_layers(outputs)
        matches = self.matcher.match_layers(logits, boxes, targets, groups)
        # the last layer's block of each image starts with its group-0 pairs (queries ascending)
        counts = [min(logits.shape[2] // groups, len(t["labels"])) for t in targets]
        start, offset, indices = (len(logits) - 1) * groups * sum(counts), 0, []
        for n, t in zip(counts, targets):
            part = matches[:, start : start + n]
            indices.append((part[2], part[3] - offset))
            start, offset = start + groups * n, offset + len(t["labels"])
        return indices, matches

    def _matches_per_layer(self, outputs, targets, indices):
        """``match_layers``' (4, M) matches of :meth:`_stack_layers`'s layers from one matcher call
        per layer (and per layer's extra groups), ``indices`` for the last layer's DETR queries."""
        layers = [*outputs.get("aux_outputs", [])[: self.num_aux_layers], outputs]
        group = outputs.get("group_outputs")
        n = outputs["pred_logits"].shape[1]
        pairs = []  # per (layer, image): (queries, targets)
        for i, layer in enumerate(layers):
            own = indices if layer is outputs else self.matcher(layer, targets)
            if group is not None:
                g_layer = group if layer is outputs else group["aux_outputs"][i]
                extra = self.matcher(g_layer, targets, groups=group["groups"])
                own = [
                    (torch.cat([q, gq + n]), torch.cat([j, gj]))
                    for (q, j), (gq, gj) in zip(own, extra)
                ]
            pairs.extend(own)
        device = outputs["pred_logits"].device
        lengths = [len(q) for q, _ in pairs]
        which = torch.arange(len(pairs), device=device).repeat_interleave(
            torch.tensor(lengths, device=device), output_size=sum(lengths)
        )
        sizes = [len(t["labels"]) for t in targets]
        offsets = torch.tensor(np.cumsum([0] + sizes[:-1]), device=device)
        image = which % len(targets)
        query = torch.cat([q for q, _ in pairs]).to(device)
        target = torch.cat([j for _, j in pairs]).to(device) + offsets[image]
        return torch.stack([which // len(targets), image, query, target])

    def _layer_losses(self, logits, boxes, matches, labels, target_boxes, num_boxes):
        """Weighted labels / boxes losses of stacked layers (logits (L, B, Q, K+1), boxes
        (L, B, Q, 4), ``matches`` (4, M) into them and into the concatenated target ``labels`` /
        ``target_boxes``): {key: (L,) one loss per layer}."""
        layer, image, query, target = matches
        num_layers, out = logits.shape[0], {}
        if "labels" in self.losses:
            classes = torch.full(
                logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device
            )
            classes[layer, image, query] = labels[target]
            nll = F.cross_entropy(
                logits.flatten(0, 2), classes.flatten(), self.empty_weight, reduction="none"
            )  # weighted: the mean of each layer is its sum / the sum of its weights
            weight = self.empty_weight[classes].view(num_layers, -1).sum(1)
            out["loss_ce"] = nll.view(num_layers, -1).sum(1) / weight * self.weight_dict["loss_ce"]
        if "boxes" in self.losses:
            src, tgt = boxes[layer, image, query], target_boxes[target]
            out.update(self._paired_box_losses(src, tgt, layer, num_layers, num_boxes))
        return out

    def _paired_box_losses(self, src, tgt, layer, num_layers, num_boxes):
        """Weighted L1 and GIoU losses of paired (M, 4) cxcywh boxes, summed per ``layer`` (M,) of
        ``num_layers`` / num_boxes: {key: (num_layers,)}."""
        giou = paired_giou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt))
        per_match = torch.stack([F.l1_loss(src, tgt, reduction="none").sum(-1), 1 - giou], 1)
        sums = src.new_zeros(num_layers, 2).index_add(0, layer, per_match) / num_boxes
        w = self.weight_dict
        return {"loss_bbox": sums[:, 0] * w["loss_bbox"], "loss_giou": sums[:, 1] * w["loss_giou"]}

    @staticmethod
    def denoising_slots(dn_copies, dn_slots, targets, device):
        """``denoising_targets``' slots, in its order (image, copy, target), from the target counts
        on the host (slot c * P + j of image b holds target j of image b for j < its count): a
        (3, M) int64 tensor on ``device`` of image, slot and target (an index into the batch's
        concatenated targets)."""
        rows, offset = [], 0
        for b, t in enumerate(targets):
            n = len(t["labels"])
            rows += [(b, c * dn_slots + j, offset + j) for c in range(dn_copies) for j in range(n)]
            offset += n
        return torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, 3).T

    def _batched_denoising_losses(self, dn, targets, num_boxes, metrics):
        """``_denoising_losses`` of every supervised layer at once: {key: (L,)} weighted."""
        layers = [*dn["aux_outputs"][: self.num_aux_layers], dn]
        logits = torch.stack([o["pred_logits"] for o in layers])  # (L, B, D * P, K+1)
        boxes = torch.stack([o["pred_boxes"] for o in layers])
        b, s, j = self.denoising_slots(
            dn["dn_copies"], dn["dn_valid"].shape[1], targets, logits.device
        )
        num_layers = len(layers)
        if not sum(len(t["labels"]) for t in targets):
            zero = (logits.sum() * 0.0 + boxes.sum() * 0.0).expand(num_layers)
            return {"loss_ce": zero, "loss_bbox": zero, "loss_giou": zero}
        labels = torch.cat([t["labels"] for t in targets]).to(logits.device)[j]
        tgt = torch.cat([t["boxes"] for t in targets]).to(boxes)[j]
        logits, src = logits[:, b, s], boxes[:, b, s]  # (L, M, ·)
        nll = F.cross_entropy(
            logits.flatten(0, 1), labels.repeat(num_layers), self.empty_weight, reduction="none"
        )
        ce = nll.view(num_layers, -1).sum(1) / self.empty_weight[labels].sum()
        layer = torch.arange(num_layers, device=logits.device).repeat_interleave(len(labels))
        out = {"loss_ce": ce * self.weight_dict["loss_ce"]}
        out.update(
            self._paired_box_losses(
                src.flatten(0, 1),
                tgt.repeat(num_layers, 1),
                layer,
                num_layers,
                num_boxes * dn["dn_copies"],
            )
        )
        with torch.no_grad():
            pred = logits[-1].argmax(-1)
            metrics["class_error_dn"] = 100 - (pred == labels).float().mean() * 100
        return out

    def _batched_losses_and_metrics(self, outputs, targets, indices, pred_masks, matches):
        """``_losses_and_metrics`` with every layer's losses computed at once (``batched``)."""
        device = outputs["pred_logits"].device
        num_boxes = self.num_boxes(targets, device)
        per_layer, out = {}, {}
        if self._trains_detection():
            logits, boxes, groups = self._stack_layers(outputs)
            if matches is None:
                matches = self._matches_per_layer(outputs, targets, indices)
            labels = torch.cat([t["labels"] for t in targets]).to(device)
            target_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes)
            per_layer = self._layer_losses(
                logits, boxes, matches, labels, target_boxes, num_boxes * groups
            )
            out.update({k: v[-1] for k, v in per_layer.items()})
        if "masks" in self.losses:
            if pred_masks is None:
                raise ValueError("SetCriterion: mask losses need pred_masks of the matched queries")
            masks = self.loss_masks(pred_masks, targets, indices, num_boxes)
            out.update({k: v * self.weight_dict[k] for k, v in masks.items()})
        for i in range(len(next(iter(per_layer.values()), [])) - 1):
            out.update({f"{k}_{i}": v[i] for k, v in per_layer.items()})
        metrics = self.metrics(outputs, targets, indices)
        if self.denoising and "dn_outputs" in outputs:
            dn = self._batched_denoising_losses(outputs["dn_outputs"], targets, num_boxes, metrics)
            out.update({f"{k}_dn": v[-1] for k, v in dn.items()})
            for i in range(len(dn["loss_ce"]) - 1):
                out.update({f"{k}_dn_{i}": v[i] for k, v in dn.items()})
        if "labels" not in self.losses:  # frozen detector: its losses are diagnostics
            with torch.no_grad():
                metrics.update(self.loss_labels(outputs, targets, indices, num_boxes))
                metrics.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return out, metrics
