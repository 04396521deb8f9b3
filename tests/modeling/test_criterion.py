"""SetCriterion: every loss against an independent hand computation on a small hand-built case."""

import math

import pytest
import torch

from detr_panoptic_d2.modeling import HungarianMatcher, SetCriterion

K = 2  # classes 0, 1; index 2 is no-object
EOS = 0.1
WEIGHTS = {"loss_ce": 1.5, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 3.0, "loss_dice": 7.0}
# Fixed matching: image 0 queries (0, 2) → targets (1, 0); image 1 query 1 → target 0.
INDICES = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([0]))]
BOXES = ("labels", "boxes")  # stage 1


def fixed_matcher(outputs, targets):
    return INDICES


def hand_case(seed=0, n_aux=0):
    g = torch.Generator().manual_seed(seed)

    def head():
        return {
            "pred_logits": torch.randn(2, 3, K + 1, generator=g, dtype=torch.float64),
            "pred_boxes": torch.tensor(
                [
                    [[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.2], [0.6, 0.4, 0.3, 0.3]],
                    [[0.4, 0.4, 0.2, 0.2], [0.55, 0.45, 0.5, 0.4], [0.2, 0.2, 0.1, 0.1]],
                ],
                dtype=torch.float64,
            )
            + 0.02 * torch.rand(2, 3, 4, generator=g, dtype=torch.float64),
        }

    outputs = head()
    outputs["pred_masks"] = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2
    if n_aux:
        outputs["aux_outputs"] = [head() for _ in range(n_aux)]
    masks0 = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks0[0, :2, :3] = True
    masks0[1, 1:, 2:] = True
    masks1 = torch.zeros(1, 4, 5, dtype=torch.bool)
    masks1[0, 2:, :] = True
    targets = [
        {
            "labels": torch.tensor([1, 0]),
            "boxes": torch.tensor(
                [[0.55, 0.45, 0.3, 0.3], [0.5, 0.5, 0.25, 0.3]], dtype=torch.float64
            ),
            "masks": masks0,
        },
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.5, 0.5, 0.45, 0.4]], dtype=torch.float64),
            "masks": masks1,
        },
    ]
    return outputs, targets


def matched_pairs(targets):
    """[(b, q, t)] of the fixed matching."""
    return [
        (b, q, t) for b, (qs, ts) in enumerate(INDICES) for q, t in zip(qs.tolist(), ts.tolist())
    ]


def ce_by_hand(logits, targets):
    target_class = {(b, q): targets[b]["labels"][t].item() for b, q, t in matched_pairs(targets)}
    num = den = 0.0
    for b in range(logits.shape[0]):
        for q in range(logits.shape[1]):
            y = target_class.get((b, q), K)
            w = EOS if y == K else 1.0
            row = logits[b, q].tolist()
            log_softmax = row[y] - math.log(sum(math.exp(v) for v in row))
            num += -w * log_softmax
            den += w
    return num / den


def giou_by_hand(a, b):
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def boxes_by_hand(pred_boxes, targets, num_boxes):
    l1 = giou = 0.0
    for b, q, t in matched_pairs(targets):
        p, tg = pred_boxes[b, q].tolist(), targets[b]["boxes"][t].tolist()
        l1 += sum(abs(x - y) for x, y in zip(p, tg))
        giou += 1 - giou_by_hand(p, tg)
    return l1 / num_boxes, giou / num_boxes


def masks_by_hand(pred_masks, targets, num_boxes, alpha=0.25, gamma=2.0):
    focal = dice = 0.0
    for b, q, t in matched_pairs(targets):
        x = pred_masks[b, q].flatten().tolist()
        y = targets[b]["masks"][t].flatten().double().tolist()
        per_pixel, sp, st, spt = [], 0.0, 0.0, 0.0
        for xi, ti in zip(x, y):
            p = 1 / (1 + math.exp(-xi))
            ce = -(ti * math.log(p) + (1 - ti) * math.log(1 - p))
            p_t = p * ti + (1 - p) * (1 - ti)
            a_t = alpha * ti + (1 - alpha) * (1 - ti)
            per_pixel.append(a_t * ce * (1 - p_t) ** gamma)
            sp, st, spt = sp + p, st + ti, spt + p * ti
        focal += sum(per_pixel) / len(per_pixel)
        dice += 1 - (2 * spt + 1) / (sp + st + 1)
    return focal / num_boxes, dice / num_boxes


def make_criterion(
    matcher=fixed_matcher, losses=("labels", "boxes", "masks"), num_aux_layers=2, **kw
):
    crit = SetCriterion(
        K, matcher, WEIGHTS, losses=losses, num_aux_layers=num_aux_layers, eos_coef=EOS, **kw
    )
    return crit.double()  # float64 hand comparisons


def run(crit, outputs, targets):
    """The steps of DetrPanoptic.losses: match, masks of the matched queries, losses with that
    matching."""
    indices = crit.matcher(outputs, targets)
    pred_masks = None
    if "pred_masks" in outputs and "masks" in crit.losses:
        pred_masks = outputs["pred_masks"][crit.matched_query_index(indices)]
    losses, metrics = crit(outputs, targets, indices, pred_masks)
    return losses, metrics, indices


def test_each_loss_matches_hand_computation():
    outputs, targets = hand_case()
    losses, metrics, indices = run(make_criterion(), outputs, targets)
    assert indices is INDICES
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"}
    num_boxes = 3
    l1, giou = boxes_by_hand(outputs["pred_boxes"], targets, num_boxes)
    focal, dice = masks_by_hand(outputs["pred_masks"], targets, num_boxes)
    expected = {
        "loss_ce": ce_by_hand(outputs["pred_logits"], targets),
        "loss_bbox": l1,
        "loss_giou": giou,
        "loss_mask": focal,
        "loss_dice": dice,
    }
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(WEIGHTS[k] * v, rel=1e-9, abs=1e-12), k


def test_matched_query_index_and_mask_rows():
    """matched_query_index gives the rows the caller computes masks for: image by image, in matching
    order."""
    outputs, targets = hand_case()
    pred_masks = outputs.pop("pred_masks")
    crit = make_criterion()
    b, q = crit.matched_query_index(INDICES)
    assert (b.tolist(), q.tolist()) == ([0, 0, 1], [0, 2, 1])
    losses, _ = crit(outputs, targets, INDICES, pred_masks[b, q])
    focal, dice = masks_by_hand(pred_masks, targets, 3)
    assert losses["loss_mask"].item() == pytest.approx(WEIGHTS["loss_mask"] * focal, rel=1e-9)
    assert losses["loss_dice"].item() == pytest.approx(WEIGHTS["loss_dice"] * dice, rel=1e-9)
    with pytest.raises(ValueError, match="pred_masks"):
        crit(outputs, targets, INDICES)


def test_weight_dict_expanded_up_front():
    crit = make_criterion(num_aux_layers=2)
    base = {"loss_ce", "loss_bbox", "loss_giou"}
    assert set(crit.weight_dict) == base | {"loss_mask", "loss_dice"} | {
        f"{k}_{i}" for k in base for i in (0, 1)
    }
    assert crit.weight_dict["loss_giou_1"] == WEIGHTS["loss_giou"]
    assert set(make_criterion(losses=("masks",)).weight_dict) == {"loss_mask", "loss_dice"}
    with pytest.raises(ValueError, match="unknown losses"):
        make_criterion(losses=("labels", "keypoints"))


def test_mask_loss_upsamples_bilinearly_to_target_size():
    outputs, targets = hand_case()
    small = outputs["pred_masks"][..., :2, :3].clone()  # (2, 3, 2, 3) → upsampled to (4, 5)
    outputs["pred_masks"] = small
    losses, _, _ = run(make_criterion(), outputs, targets)
    up = torch.nn.functional.interpolate(
        small.flatten(0, 1)[:, None], size=(4, 5), mode="bilinear", align_corners=False
    ).view(2, 3, 4, 5)
    focal, dice = masks_by_hand(up, targets, 3)
    assert losses["loss_mask"].item() == pytest.approx(WEIGHTS["loss_mask"] * focal, rel=1e-9)
    assert losses["loss_dice"].item() == pytest.approx(WEIGHTS["loss_dice"] * dice, rel=1e-9)


def test_aux_losses_suffixed_and_weighted():
    outputs, targets = hand_case(n_aux=2)
    outputs.pop("pred_masks")
    losses, metrics, _ = run(make_criterion(losses=BOXES), outputs, targets)
    base = {"loss_ce", "loss_bbox", "loss_giou"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)}
    for i, aux in enumerate(outputs["aux_outputs"]):
        l1, giou = boxes_by_hand(aux["pred_boxes"], targets, 3)
        assert losses[f"loss_ce_{i}"].item() == pytest.approx(
            WEIGHTS["loss_ce"] * ce_by_hand(aux["pred_logits"], targets), rel=1e-9
        )
        assert losses[f"loss_bbox_{i}"].item() == pytest.approx(WEIGHTS["loss_bbox"] * l1, rel=1e-9)
        assert losses[f"loss_giou_{i}"].item() == pytest.approx(
            WEIGHTS["loss_giou"] * giou, rel=1e-9
        )
    # aux layers are matched on their own predictions: the real matcher is called once per layer
    calls = []

    def counting_matcher(o, t):
        calls.append(o["pred_logits"])
        return INDICES

    run(make_criterion(counting_matcher, losses=BOXES), outputs, targets)
    assert len(calls) == 3
    assert (
        calls[1] is outputs["aux_outputs"][0]["pred_logits"]
        and calls[2] is outputs["aux_outputs"][1]["pred_logits"]
    )


def test_metrics_are_not_losses():
    outputs, targets = hand_case()
    losses, metrics, _ = run(make_criterion(), outputs, targets)
    assert set(metrics) == {"class_error", "cardinality_error"}
    assert not any(k in losses for k in metrics)
    logits = outputs["pred_logits"]
    matched = matched_pairs(targets)
    correct = sum(
        logits[b, q].argmax().item() == targets[b]["labels"][t].item() for b, q, t in matched
    )
    assert metrics["class_error"].item() == pytest.approx(
        100 - 100 * correct / len(matched), abs=1e-4
    )
    card = [(logits[b].argmax(-1) != K).sum().item() for b in range(2)]
    expected_card = (abs(card[0] - 2) + abs(card[1] - 1)) / 2
    assert metrics["cardinality_error"].item() == pytest.approx(expected_card)
    assert not metrics["class_error"].requires_grad


def test_stage2_box_losses_become_metrics():
    outputs, targets = hand_case(n_aux=1)
    losses, metrics, _ = run(make_criterion(losses=("masks",), num_aux_layers=0), outputs, targets)
    assert set(losses) == {"loss_mask", "loss_dice"}
    assert {"loss_ce", "loss_bbox", "loss_giou", "class_error"} <= set(metrics)
    assert not any(k.endswith("_0") for k in metrics)  # no aux losses computed at all


def test_image_without_targets():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, K + 1, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.rand(1, 4, 4, generator=g, dtype=torch.float64) * 0.3 + 0.2
    boxes.requires_grad_(True)
    targets = [
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "boxes": torch.zeros(0, 4, dtype=torch.float64),
        }
    ]
    crit = make_criterion(HungarianMatcher(), losses=BOXES)
    assert crit.num_boxes(targets, "cpu") == 1.0
    losses, metrics, indices = run(crit, {"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert indices[0][0].numel() == 0
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    expected_ce = (
        -logits[0].log_softmax(-1)[:, K].mean().item()
    )  # all no-object: the weights cancel
    assert losses["loss_ce"].item() == pytest.approx(WEIGHTS["loss_ce"] * expected_ce, rel=1e-9)
    assert metrics["class_error"].item() == 0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all()


def test_num_boxes_normalization():
    crit = make_criterion(losses=BOXES)
    t = lambda n: {"labels": torch.zeros(n, dtype=torch.int64), "boxes": torch.zeros(n, 4)}  # noqa: E731
    assert crit.num_boxes([t(0), t(0)], "cpu") == 1.0
    assert crit.num_boxes([t(2), t(3)], "cpu") == 5.0
    # losses scale with 1 / num_boxes: doubling every target's contribution doubles num_boxes too
    outputs, targets = hand_case()
    outputs.pop("pred_masks")
    losses, _, _ = run(crit, outputs, targets)
    l1, _ = boxes_by_hand(outputs["pred_boxes"], targets, 1)
    assert losses["loss_bbox"].item() == pytest.approx(WEIGHTS["loss_bbox"] * l1 / 3, rel=1e-9)
