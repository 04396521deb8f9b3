"""DETR's set criterion: Hungarian-matched classification, box and mask losses."""
import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from .box_ops import cxcywh_to_xyxy


def dice_loss(inputs, targets, num_boxes):
    """DETR's dice loss. inputs: (K, P) logits; targets: (K, P) in {0, 1}. Sum over K / num_boxes."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss averaged over pixels, summed over masks, divided by num_boxes (as DETR)."""
    loss = sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.mean(1).sum() / num_boxes


class SetCriterion(nn.Module):
    """Losses of DETR given a Hungarian matching of queries to targets.

    Weighted losses (returned as losses): ``loss_ce`` (cross-entropy with a reduced no-object weight),
    ``loss_bbox`` (L1 on normalized cxcywh) and ``loss_giou``, each normalized by the number of target boxes
    averaged over all workers; ``loss_mask`` (sigmoid focal) and ``loss_dice`` on matched queries when
    masks are predicted; the class and box losses again for every auxiliary decoder layer (suffix ``_i``).
    Diagnostics (``class_error``, ``cardinality_error``) are returned separately as metrics.
    """

    def __init__(
        self, num_classes, matcher, weight_dict, eos_coef=0.1, focal_alpha=0.25, focal_gamma=2.0,
        box_losses=True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        # False in stage 2: the detection part is frozen, its losses are logged as metrics only.
        self.box_losses = box_losses
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)  # from the config, not checkpoints

    @staticmethod
    def _src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices):
        logits = outputs["pred_logits"]  # (B, N, K+1)
        idx = self._src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = target_classes_o.to(logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss_ce}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        idx = self._src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(target_boxes)))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_masks(self, outputs, targets, indices, num_boxes, mask_predictor=None):
        """Masks of matched queries, bilinearly upsampled to the padded target size.

        ``mask_predictor(batch_idx, query_idx) -> (K, h, w)`` computes masks for the matched queries only;
        otherwise ``outputs["pred_masks"]`` (B, N, h, w) is indexed.
        """
        batch_idx, src_idx = self._src_permutation_idx(indices)
        if mask_predictor is not None:
            src_masks = mask_predictor(batch_idx, src_idx)
        else:
            src_masks = outputs["pred_masks"][batch_idx, src_idx]
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src_masks)
        if src_masks.shape[0] == 0:
            zero = src_masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src_masks = F.interpolate(
            src_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0].flatten(1)
        target_masks = target_masks.flatten(1)
        return {
            "loss_mask": focal_loss(src_masks, target_masks, num_boxes, self.focal_alpha, self.focal_gamma),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    @torch.no_grad()
    def metrics(self, outputs, targets, indices):
        logits = outputs["pred_logits"]
        idx = self._src_permutation_idx(indices)
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

    def forward(self, outputs, targets, mask_predictor=None):
        """Returns (weighted losses, metrics, matching of the last decoder layer).

        outputs: "pred_logits" (B, N, K+1), "pred_boxes" (B, N, 4), optional "pred_masks" (B, N, h, w),
        optional "aux_outputs" (list of dicts of logits and boxes). targets: list of dicts with "labels",
        "boxes" (normalized cxcywh) and, with masks, "masks" (T, H_pad, W_pad).
        """
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main, targets)
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)

        raw = {}
        raw.update(self.loss_labels(main, targets, indices))
        raw.update(self.loss_boxes(main, targets, indices, num_boxes))
        if self.box_losses:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_indices = self.matcher(aux, targets)
                for k, v in {
                    **self.loss_labels(aux, targets, aux_indices),
                    **self.loss_boxes(aux, targets, aux_indices, num_boxes),
                }.items():
                    raw[f"{k}_{i}"] = v
        metrics = self.metrics(main, targets, indices)
        if not self.box_losses:
            metrics.update({k: v.detach() for k, v in raw.items()})
            raw = {}
        if mask_predictor is not None or "pred_masks" in outputs:
            raw.update(self.loss_masks(main, targets, indices, num_boxes, mask_predictor))

        losses = {k: v * self.weight_dict[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] for k, v in raw.items()}
        return losses, metrics, indices
