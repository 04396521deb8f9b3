"""Hungarian matching between predictions and targets (DETR's bipartite assignment)."""

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from .box_ops import cxcywh_to_xyxy
from .checks import check_arg
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
        for arg, value in (
            ("cost_class", cost_class),
            ("cost_bbox", cost_bbox),
            ("cost_giou", cost_giou),
        ):
            check_arg(
                value >= 0, "HungarianMatcher", arg, f"MODEL.DETR.{arg.upper()}", value, ">= 0"
            )
        check_arg(
            cost_class or cost_bbox or cost_giou,
            "HungarianMatcher",
            "cost_*",
            "MODEL.DETR.COST_*",
            0,
            "not all 0",
        )
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
        host = self._solve(
            outputs["pred_logits"][None], outputs["pred_boxes"][None], targets, groups
        )
        # one host-to-device copy of every index of the batch, split back per image
        flat = torch.from_numpy(np.concatenate([np.concatenate(p) for p in host]))
        flat = flat.to(outputs["pred_logits"].device, non_blocking=True)
        lengths = [n for r, j in host for n in (len(r), len(j))]
        parts = flat.split(lengths)
        return [(parts[2 * i], parts[2 * i + 1]) for i in range(len(host))]

    @torch.no_grad()
    def match_layers(self, logits, boxes, targets, groups=1):
        """Each of L stacked outputs (decoder layers) matched on its own, as ``forward`` matches
        one, with one cost computation, one copy of the costs to the host and one copy of the
        indices back for all of them.

        logits: (L, B, N, K+1); boxes: (L, B, N, 4) normalized cxcywh. Returns a (4, M) int64 tensor
        on their device, one column per match: layer, image, query, target (an index into the
        batch's targets concatenated image by image), ordered by layer, image and query; each
        (layer, image) holds ``forward``'s pairs of that image."""
        bs = logits.shape[1]
        host = self._solve(logits, boxes, targets, groups)
        sizes = [len(t["boxes"]) for t in targets]
        offsets = np.cumsum([0] + sizes[:-1])
        columns = [
            np.stack([np.full_like(r, m // bs), np.full_like(r, m % bs), r, j + offsets[m % bs]])
            for m, (r, j) in enumerate(host)
        ]
        flat = torch.from_numpy(np.concatenate(columns, axis=1))
        return flat.to(logits.device, non_blocking=True)

    def _solve(self, logits, boxes, targets, groups):
        """scipy's assignment of each (layer, image) of (L, B, N, ·) outputs, layer-major: a list of
        L * B pairs (query indices, target indices), numpy int64, each group on its own."""
        num_layers, bs, num_queries = logits.shape[:3]
        if num_queries % groups:
            raise ValueError(f"HungarianMatcher: {num_queries} queries in {groups} equal groups")
        with autocast_off(logits.device.type):  # float32 costs under SOLVER.AMP
            cost = self._cost(logits.flatten(0, 2), boxes.flatten(0, 2), targets)
        sizes = [len(t["boxes"]) for t in targets]
        cost = cost.view(num_layers, bs, num_queries, sum(sizes)).cpu().numpy()
        starts = np.cumsum([0] + sizes)
        per_group = num_queries // groups
        host = []
        for layer in cost:
            for i, c in enumerate(layer):
                rows, cols = [], []
                for g in range(groups):
                    block = c[g * per_group : (g + 1) * per_group, starts[i] : starts[i + 1]]
                    r, j = linear_sum_assignment(block)
                    rows.append(r.astype(np.int64) + g * per_group)
                    cols.append(j.astype(np.int64))
                host.append((np.concatenate(rows), np.concatenate(cols)))
        return host

    def _cost(self, out_logits, out_boxes, targets):
        """(P, T) matching cost of P predictions against the batch's T targets."""
        out_prob = out_logits.float().softmax(-1)
        out_bbox = out_boxes.float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()
        cost_class = -out_prob[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(cxcywh_to_xyxy(out_bbox), cxcywh_to_xyxy(tgt_bbox))
        return (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
