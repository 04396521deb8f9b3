"""HungarianMatcher against a brute-force optimum over all assignments, on an independently built
cost."""

import itertools

import pytest
import torch

from detr_panoptic_d2.modeling import HungarianMatcher

N_QUERIES, N_CLASSES = 5, 4
W_CLASS, W_BBOX, W_GIOU = 1.0, 5.0, 2.0


def giou_by_hand(a, b):
    """GIoU of two cxcywh boxes, written out with python floats."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    iou = inter / union
    return iou - (hull - union) / hull


def cost_matrix_by_hand(logits, boxes, labels, tboxes):
    """(N, T) list of lists of python floats."""
    prob = logits.double().softmax(-1).tolist()
    boxes, tboxes, labels = boxes.tolist(), tboxes.tolist(), labels.tolist()
    cost = []
    for i in range(len(boxes)):
        row = []
        for j in range(len(tboxes)):
            l1 = sum(abs(p - t) for p, t in zip(boxes[i], tboxes[j]))
            row.append(
                W_CLASS * -prob[i][labels[j]]
                + W_BBOX * l1
                + W_GIOU * -giou_by_hand(boxes[i], tboxes[j])
            )
        cost.append(row)
    return cost


def brute_force_min(cost, n_queries, n_targets):
    """Minimum total cost over all injective maps targets → queries."""
    if n_targets == 0:
        return 0.0
    return min(
        sum(cost[q][t] for t, q in enumerate(perm))
        for perm in itertools.permutations(range(n_queries), n_targets)
    )


def random_boxes(g, n):
    cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.35 + 0.05
    return torch.cat([cxcy, wh], 1)


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_optimum(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [seed % 5, (seed * 3 + 2) % 5]  # 0..4 targets, different per image
    outputs = {
        "pred_logits": torch.randn(2, N_QUERIES, N_CLASSES + 1, generator=g) * 2,
        "pred_boxes": random_boxes(g, 2 * N_QUERIES).view(2, N_QUERIES, 4),
    }
    targets = [
        {"labels": torch.randint(0, N_CLASSES, (n,), generator=g), "boxes": random_boxes(g, n)}
        for n in sizes
    ]
    indices = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU)(outputs, targets)
    assert len(indices) == 2
    for b, (n, (qi, ti)) in enumerate(zip(sizes, indices)):
        assert qi.dtype == ti.dtype == torch.int64
        assert len(qi) == len(ti) == n
        assert len(set(qi.tolist())) == n and sorted(ti.tolist()) == list(
            range(n)
        )  # one-to-one, all targets
        assert qi.tolist() == sorted(qi.tolist())
        cost = cost_matrix_by_hand(
            outputs["pred_logits"][b],
            outputs["pred_boxes"][b],
            targets[b]["labels"],
            targets[b]["boxes"],
        )
        got = sum(cost[q][t] for q, t in zip(qi.tolist(), ti.tolist()))
        assert got == pytest.approx(brute_force_min(cost, N_QUERIES, n), abs=1e-4)


def test_costs_are_weighted():
    """With only the class cost, each target goes to the query most confident in its class."""
    logits = torch.full((1, 3, 3), -10.0)
    logits[0, 0, 1] = logits[0, 1, 0] = logits[0, 2, 2] = 10.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)}]
    ((qi, ti),) = HungarianMatcher(1.0, 0.0, 0.0)(
        {"pred_logits": logits, "pred_boxes": boxes}, targets
    )
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 1, 1: 0}
    with pytest.raises(ValueError):
        HungarianMatcher(0, 0, 0)


def test_no_targets_gives_empty_indices():
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(2, N_QUERIES, N_CLASSES + 1, generator=g),
        "pred_boxes": random_boxes(g, 2 * N_QUERIES).view(2, N_QUERIES, 4),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for targets in (
        [empty, empty],
        [empty, {"labels": torch.tensor([1]), "boxes": random_boxes(g, 1)}],
    ):
        indices = HungarianMatcher()(outputs, targets)
        qi, ti = indices[0]
        assert qi.numel() == 0 and ti.numel() == 0 and qi.dtype == ti.dtype == torch.int64
    assert len(indices[1][0]) == 1
