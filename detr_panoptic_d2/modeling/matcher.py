"""Hungarian matching between predictions and targets (DETR's bipartite assignment)."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from .box_ops import cxcywh_to_xyxy


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
        Returns a list of B pairs (query indices, target indices), int64, sorted by query index.
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        if num_queries % groups:
            raise ValueError(f"HungarianMatcher: {num_queries} queries in {groups} equal groups")
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
        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = [], []
            for g, cg in enumerate(c[i].split(per_group, 0)):
                r, j = linear_sum_assignment(cg)
                rows.append(torch.as_tensor(r, dtype=torch.int64) + g * per_group)
                cols.append(torch.as_tensor(j, dtype=torch.int64))
            indices.append((torch.cat(rows), torch.cat(cols)))
        return indices
