"""Hungarian matching between predictions and targets (DETR's bipartite assignment)."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from .box_ops import cxcywh_to_xyxy
from .inference_opt import autocast_off


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing
    ``cost_class * C_cls + cost_bbox * C_L1 + cost_giou * C_giou``.

    C_cls is the negative softmax probability of the target class, C_L1 the L1 distance between
    normalized cxcywh boxes and C_giou the negative generalized IoU. Queries left unmatched are
    no-object. With ``groups`` > 1 (Group DETR), the queries are that many consecutive groups of
    equal size, and each group is matched one-to-one with the targets on its own.
    """

    def __init__(self, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def forward(self, outputs, targets, groups=1):
        """
        outputs: "pred_logits" (B, N, K+1), "pred_boxes" (B, N, 4) normalized cxcywh.
        targets: list of B dicts with "labels" (T_i,) and "boxes" (T_i, 4) normalized cxcywh.
        groups: number of query groups (N a multiple of it); each target is matched once per group.
        Returns a list of B pairs (query indices, target indices), int64, sorted by query index,
        on the device of the outputs: the costs come to the host once (one copy for the batch) for
        ``scipy``, and the indices go back in one copy.
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        if num_queries % groups:
            raise ValueError(f"HungarianMatcher: {num_queries} queries in {groups} equal groups")
        with autocast_off(outputs["pred_logits"].device.type):  # float32 costs under SOLVER.AMP
            return self._match(outputs, targets, groups)

    def _match(self, outputs, targets, groups):
        """``forward`` with autocast off."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)  # (B*N, K+1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()

        cost_class = -out_prob[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(cxcywh_to_xyxy(out_bbox), cxcywh_to_xyxy(tgt_bbox))
        cost = (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
        cost = cost.view(bs, num_queries, -1).cpu()

        sizes = [len(t["boxes"]) for t in targets]
        per_group = num_queries // groups
        host = []  # per image: (query indices, target indices), numpy, on the host
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = [], []
            for g, cg in enumerate(c[i].split(per_group, 0)):
                r, j = linear_sum_assignment(cg)
                rows.append(r.astype(np.int64) + g * per_group)
                cols.append(j.astype(np.int64))
            host.append((np.concatenate(rows), np.concatenate(cols)))
        # one host-to-device copy of every index of the batch, split back per image
        flat = torch.from_numpy(np.concatenate([np.concatenate(p) for p in host]))
        flat = flat.to(outputs["pred_logits"].device, non_blocking=True)
        lengths = [n for r, j in host for n in (len(r), len(j))]
        parts = flat.split(lengths)
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(len(host))]
