"""Training-only queries: query groups (Group DETR) and denoising queries (DN-DETR).

What must hold: the attention masks block every path between groups and from matching queries to
denoising queries (on the masks and by gradients), matching is per group, the denoising targets
are exact, the losses are Group DETR's / DN-DETR's, inference is DETR's bit for bit given the same
weights, and checkpoints load both ways (official / inference checkpoints into a model with the
options, and back), with resume restoring the training-only parameters.
"""

import pytest
import torch
from detectron2.utils.events import EventStorage
from detr_test_utils import DEC_LAYERS, NUM_CLASSES, NUM_QUERIES, build_tiny_model, make_input

from detr_panoptic_d2.modeling.box_ops import cxcywh_to_xyxy
from detr_panoptic_d2.modeling.criterion import SetCriterion
from detr_panoptic_d2.modeling.matcher import HungarianMatcher
from detr_panoptic_d2.modeling.training_queries import (
    TRAINING_ONLY_PREFIX,
    box_sine_embedding,
    noise_boxes,
    noise_labels,
    training_query_mask,
)

GROUPS, COPIES = 3, 2
OPTIONS = {"MODEL.DETR.GROUPS": GROUPS, "MODEL.DETR.DN.COPIES": COPIES, "MODEL.DETR.DROPOUT": 0.0}
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 1.0, "loss_dice": 1.0}


def _batch():
    # 3 and 1 targets: image 1 has padding slots in every denoising copy
    return [make_input(64, 96, 3), make_input(96, 64, 1, seed=1)]


def _allowed(i, j, n, groups, slots):
    """The rule, written out: may query i attend query j?"""
    n_match = groups * n

    def block(k):
        return k // n if k < n_match else groups + (k - n_match) // slots

    if block(i) == block(j):
        return True
    return i >= n_match and j < n  # a denoising query sees DETR's queries (group 0)


# ---- masks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,groups,copies,slots", [(4, 3, 0, 0), (4, 1, 3, 2), (3, 2, 2, 3), (5, 1, 0, 0)]
)
def test_mask_follows_the_rule(n, groups, copies, slots):
    mask = training_query_mask(n, groups, copies, slots)
    q = groups * n + copies * slots
    assert mask.shape == (q, q) and mask.dtype == torch.bool
    for i in range(q):
        for j in range(q):
            assert mask[i, j] == (not _allowed(i, j, n, groups, slots)), (i, j)
    if groups == 1 and copies == 0:
        assert not mask.any()  # DETR alone: nothing masked


def test_mask_hides_padding_slots_from_every_query_but_themselves():
    n, groups, copies, slots = 2, 2, 2, 3
    valid = torch.tensor([[True, True, True], [True, False, False]])
    mask = training_query_mask(n, groups, copies, slots, valid)
    base = training_query_mask(n, groups, copies, slots)
    assert mask.shape == (2, 10, 10)
    assert torch.equal(mask[0], base)  # no padding in image 0
    pads = [groups * n + c * slots + s for c in range(copies) for s in (1, 2)]
    for p in pads:
        others = [k for k in range(10) if k != p]
        assert mask[1, others, p].all() and not mask[1, p, p]
    keep = [k for k in range(10) if k not in pads]
    assert torch.equal(mask[1][keep][:, keep], base[keep][:, keep])


def _decoder_inputs(model, batch):
    """Run a training forward with the decoder's query inputs (positional queries, content) made
    leaves that require grad; returns (outputs, query_pos, tgt)."""
    captured = {}

    def pre_hook(module, args, kwargs):
        src, mask, query_pos, pos = args
        query_pos = query_pos.detach().requires_grad_(True)
        tgt = kwargs["tgt"].detach().requires_grad_(True)
        captured.update(query_pos=query_pos, tgt=tgt)
        return (src, mask, query_pos, pos), {**kwargs, "tgt": tgt}

    handle = model.detr.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        images, mask = model.preprocess_image(batch)
        targets = model.prepare_targets(batch, images)
        outputs, _ = model.detr(images.tensor, mask, targets)
    finally:
        handle.remove()
    return outputs, captured["query_pos"], captured["tgt"]


def _grad_rows(value, inputs):
    """Per query (Q,) and image: whether d value / d input is non-zero, for each input (Q, B, C)."""
    grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
    rows = [
        torch.zeros(x.shape[:2], dtype=torch.bool) if g is None else g.abs().sum(-1) > 0
        for g, x in zip(grads, inputs)
    ]
    return rows[0] | rows[1]  # (Q, B)


def test_gradients_cross_no_blocked_path():
    """Every output of a block, at every decoder layer, depends on exactly the decoder inputs its
    block may attend (transitively through the layers): nothing crosses a mask."""
    model = build_tiny_model(**OPTIONS)
    model.train()
    outputs, query_pos, tgt = _decoder_inputs(model, _batch())
    n, slots = NUM_QUERIES, 3
    n_match = GROUPS * n

    def dn_index(c, s):
        return n_match + c * slots + s

    layers = [outputs] + outputs["aux_outputs"]
    groups = [outputs["group_outputs"]] + outputs["group_outputs"]["aux_outputs"]
    dns = [outputs["dn_outputs"]] + outputs["dn_outputs"]["aux_outputs"]
    assert len(layers) == len(groups) == len(dns) == DEC_LAYERS
    for main, grp, dn in zip(layers, groups, dns):
        # DETR's queries (group 0): only group 0 inputs
        val = main["pred_logits"].sum() + main["pred_boxes"].sum()
        dep = _grad_rows(val, (query_pos, tgt)).any(1)
        assert dep[:n].all() and not dep[n:].any()
        # extra group g: only its own inputs
        for g in range(1, GROUPS):
            sl = slice((g - 1) * n, g * n)
            val = grp["pred_logits"][:, sl].sum() + grp["pred_boxes"][:, sl].sum()
            dep = _grad_rows(val, (query_pos, tgt)).any(1)
            expect = torch.zeros_like(dep)
            expect[g * n : (g + 1) * n] = True
            assert torch.equal(dep, expect), g
        # denoising copy c, real slot s of image b: its copy's real slots of image b and group 0
        for b, count in ((0, 3), (1, 1)):
            for c in range(COPIES):
                for s in range(count):
                    k = c * slots + s
                    val = dn["pred_logits"][b, k].sum() + dn["pred_boxes"][b, k].sum()
                    dep = _grad_rows(val, (query_pos, tgt))
                    assert not dep[:, 1 - b].any()  # images are independent
                    expect = torch.zeros(dep.shape[0], dtype=torch.bool)
                    expect[:n] = True
                    expect[[dn_index(c, t) for t in range(count)]] = True
                    assert torch.equal(dep[:, b], expect), (b, c, s)


def test_training_only_parameters_get_no_gradient_from_detr_losses():
    """DETR's own losses (group 0) do not reach the training-only parameters."""
    model = build_tiny_model(**OPTIONS)
    batch = _batch()
    images, mask = model.preprocess_image(batch)
    outputs, _ = model.detr(images.tensor, mask, model.prepare_targets(batch, images))
    (outputs["pred_logits"].sum() + outputs["pred_boxes"].sum()).backward()
    for name, p in model.detr.training_queries.named_parameters():
        assert p.grad is None or not p.grad.any(), name
    assert model.detr.query_embed.weight.grad.abs().sum() > 0


# ---- denoising inputs and targets ----------------------------------------------------------------


def test_box_and_label_noise_bounds():
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(2000, 4, generator=g) * 0.4 + 0.3
    noisy = noise_boxes(boxes, 0.4, torch.Generator().manual_seed(1))
    d = (noisy - boxes).abs()
    w, h = boxes[:, 2], boxes[:, 3]
    assert (d[:, 0] <= 0.4 * w / 2 + 1e-6).all() and (d[:, 1] <= 0.4 * h / 2 + 1e-6).all()
    assert (d[:, 2] <= 0.4 * w + 1e-6).all() and (d[:, 3] <= 0.4 * h + 1e-6).all()
    assert d[:, 0].max() > 0.9 * 0.4 * w[d[:, 0].argmax()] / 2  # the range is used
    assert ((noisy >= 0) & (noisy <= 1)).all()
    assert torch.equal(noise_boxes(boxes, 0.0), boxes)
    labels = torch.randint(0, 7, (20000,), generator=g)
    flipped = noise_labels(labels, 0.2, 7, torch.Generator().manual_seed(2))
    assert ((flipped >= 0) & (flipped < 7)).all()
    changed = (flipped != labels).float().mean().item()
    assert abs(changed - 0.2 * 6 / 7) < 0.02  # a flip may draw the same class
    assert torch.equal(noise_labels(labels, 0.0, 7), labels)


def test_box_sine_embedding_shape_and_range():
    emb = box_sine_embedding(torch.rand(5, 3, 4), 64)
    assert emb.shape == (5, 3, 256) and emb.abs().max() <= 1


def test_denoising_inputs_without_noise_are_the_targets():
    model = build_tiny_model(
        **OPTIONS, **{"MODEL.DETR.DN.BOX_NOISE_SCALE": 0.0, "MODEL.DETR.DN.LABEL_NOISE_RATIO": 0.0}
    )
    batch = _batch()
    images, _ = model.preprocess_image(batch)
    targets = model.prepare_targets(batch, images)
    q = model.detr.training_queries(model.detr.query_embed.weight, targets, 2)
    assert (q.dn_slots, q.dn_copies, q.groups, q.num_queries) == (3, COPIES, GROUPS, NUM_QUERIES)
    assert q.query_pos.shape == (GROUPS * NUM_QUERIES + COPIES * 3, 2, 128)
    assert torch.equal(q.dn_valid, torch.tensor([[True] * 3, [True, False, False]]))
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for c in range(COPIES):
            sl = slice(c * 3, c * 3 + n)
            assert torch.equal(q.dn_labels[b, sl], t["labels"])
            assert torch.equal(q.dn_boxes[b, sl], t["boxes"])
            assert (q.dn_labels[b, c * 3 + n : (c + 1) * 3] == NUM_CLASSES).all()  # "unknown"
    # matching queries: DETR's positional queries then the groups', zero content
    n = NUM_QUERIES
    assert torch.equal(q.query_pos[:n, 0], model.detr.query_embed.weight)
    assert torch.equal(
        q.query_pos[n : GROUPS * n, 1], model.detr.training_queries.group_query_embed.weight
    )
    assert not q.tgt[: GROUPS * n].any()


def test_denoising_targets_are_exact():
    """Slot c * P + j of image b is trained towards target j of image b, with any noise."""
    model = build_tiny_model(**OPTIONS)
    batch = _batch()
    images, _ = model.preprocess_image(batch)
    targets = model.prepare_targets(batch, images)
    torch.manual_seed(3)
    q = model.detr.training_queries(model.detr.query_embed.weight, targets, 2)
    dn = {"dn_valid": q.dn_valid, "dn_copies": COPIES}
    b, s, labels, boxes = SetCriterion.denoising_targets(dn, targets)
    assert len(b) == COPIES * 4
    for bi, si, lab, box in zip(b.tolist(), s.tolist(), labels, boxes):
        j = si % 3
        assert j < len(targets[bi]["labels"])
        assert lab == targets[bi]["labels"][j] and torch.equal(box, targets[bi]["boxes"][j])
        # the noised input of that slot is a noised copy of the same target
        d = (q.dn_boxes[bi, si] - targets[bi]["boxes"][j]).abs()
        assert (d[:2] <= 0.4 * targets[bi]["boxes"][j][2:] / 2 + 1e-6).all()


# ---- matching and losses -------------------------------------------------------------------------


def _random_outputs(bsz, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(bsz, n, k + 1, generator=g),
        "pred_boxes": torch.rand(bsz, n, 4, generator=g) * 0.5 + 0.25,
    }


def _targets(counts, k, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, k, (c,), generator=g),
            "boxes": torch.rand(c, 4, generator=g) * 0.4 + 0.3,
        }
        for c in counts
    ]


def test_matching_is_per_group():
    matcher = HungarianMatcher()
    n, groups = 6, 3
    out = _random_outputs(2, n * groups, 4, 0)
    targets = _targets([4, 0], 4, 1)
    indices = matcher(out, targets, groups=groups)
    for b, (rows, cols) in enumerate(indices):
        assert torch.equal(rows, rows.sort().values)
        for g in range(groups):
            part = {k: v[:, g * n : (g + 1) * n] for k, v in out.items()}
            r, c = matcher(part, targets)[b]
            sel = (rows >= g * n) & (rows < (g + 1) * n)
            assert torch.equal(rows[sel], r + g * n) and torch.equal(cols[sel], c)
        assert len(rows) == groups * len(targets[b]["labels"])  # every target once per group
    with pytest.raises(ValueError, match="groups"):
        matcher(out, targets, groups=4)


def test_group_losses_are_the_mean_over_groups():
    """Losses with group outputs = the losses over all G x N queries, matched per group, normalized
    by G x the target count (Group DETR)."""
    k, n, groups = 5, 6, 3
    crit = SetCriterion(k, HungarianMatcher(), WEIGHTS, num_aux_layers=1)
    full = _random_outputs(2, n * groups, k, 2)
    aux_full = _random_outputs(2, n * groups, k, 3)
    targets = _targets([3, 2], k, 4)

    def split(o):
        return {key: v[:, :n] for key, v in o.items()}, {key: v[:, n:] for key, v in o.items()}

    main, extra = split(full)
    aux_main, aux_extra = split(aux_full)
    outputs = {
        **main,
        "aux_outputs": [aux_main],
        "group_outputs": {**extra, "aux_outputs": [aux_extra], "groups": groups - 1},
    }
    losses, metrics = crit(outputs, targets, crit.matcher(main, targets))
    nb = crit.num_boxes(targets, "cpu") * groups
    for layer, suffix in ((full, ""), (aux_full, "_0")):
        ref = crit._detection_losses(layer, targets, crit.matcher(layer, targets, groups), nb)
        for key, v in ref.items():
            assert torch.allclose(losses[key + suffix], v * WEIGHTS[key], atol=1e-6), key
    # metrics: DETR's queries only
    assert torch.equal(
        metrics["class_error"],
        crit.metrics(main, targets, crit.matcher(main, targets))["class_error"],
    )


def test_denoising_losses_by_hand():
    k = 5
    crit = SetCriterion(k, HungarianMatcher(), WEIGHTS, num_aux_layers=0, denoising=True)
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn"} <= set(crit.weight_dict)
    targets = _targets([2, 1], k, 5)
    copies, slots = 2, 2
    dn = {
        **_random_outputs(2, copies * slots, k, 6),
        "aux_outputs": [],
        "dn_copies": copies,
        "dn_valid": torch.tensor([[True, True], [True, False]]),
    }
    main = _random_outputs(2, 4, k, 7)
    losses, metrics = crit({**main, "dn_outputs": dn}, targets, crit.matcher(main, targets))
    pairs = [(0, 0, 0), (0, 1, 1), (0, 2, 0), (0, 3, 1), (1, 0, 0), (1, 2, 0)]  # (b, slot, target)
    logits = torch.stack([dn["pred_logits"][b, s] for b, s, _ in pairs])
    boxes = torch.stack([dn["pred_boxes"][b, s] for b, s, _ in pairs])
    t_lab = torch.stack([targets[b]["labels"][j] for b, _, j in pairs])
    t_box = torch.stack([targets[b]["boxes"][j] for b, _, j in pairs])
    nb = 3 * copies
    ce = torch.nn.functional.cross_entropy(logits, t_lab)
    l1 = (boxes - t_box).abs().sum() / nb
    from torchvision.ops import generalized_box_iou

    giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(t_box)))).sum()
    assert torch.allclose(losses["loss_ce_dn"], ce)
    assert torch.allclose(losses["loss_bbox_dn"], 5.0 * l1)
    assert torch.allclose(losses["loss_giou_dn"], 2.0 * giou / nb)
    err = 100 - (logits.argmax(-1) == t_lab).float().mean() * 100
    assert torch.allclose(metrics["class_error_dn"], err)


def test_train_step_with_options_keys_and_gradients():
    model = build_tiny_model(**OPTIONS)
    with EventStorage() as storage:
        losses = model(_batch())
        latest = storage.latest()
    base = {"loss_ce", "loss_bbox", "loss_giou"}
    keys = base | {f"{k}_dn" for k in base}
    keys |= {f"{k}_{i}" for k in keys for i in range(DEC_LAYERS - 1)}
    assert set(losses) == keys
    assert "class_error_dn" in latest
    sum(losses.values()).backward()
    for name, p in model.detr.training_queries.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_batch_without_targets_with_denoising():
    model = build_tiny_model(**OPTIONS)
    with EventStorage():
        losses = model([make_input(64, 96, 0), make_input(64, 64, 0, seed=1)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox_dn"] == 0 and losses["loss_ce_dn"] == 0
    sum(losses.values()).backward()  # every parameter is in the graph (DDP needs it)
    for name, p in model.detr.training_queries.named_parameters():
        assert p.grad is not None, name


# ---- inference and checkpoints -------------------------------------------------------------------


def _inference(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs)


def test_inference_is_detrs_bit_for_bit():
    """Same weights, with and without the options: identical inference outputs; and in training,
    DETR's queries give the same outputs (the masks hide the extra queries)."""
    plain = build_tiny_model(mask_head=True, **{"MODEL.DETR.DROPOUT": 0.0})
    opts = build_tiny_model(mask_head=True, seed=1, **OPTIONS)
    opts.load_state_dict(plain.state_dict(), strict=True)
    inputs = [make_input(64, 96, 0, seed=4), make_input(80, 72, 0, seed=5)]
    for a, b in zip(_inference(plain, inputs), _inference(opts, inputs)):
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
        assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
        ia, ib = a["instances"], b["instances"]
        assert torch.equal(ia.pred_boxes.tensor, ib.pred_boxes.tensor)
        assert torch.equal(ia.scores, ib.scores) and torch.equal(ia.pred_masks, ib.pred_masks)
    for m in (plain, opts):
        m.train()
    batch = _batch()
    with torch.no_grad():
        outs = []
        for m in (plain, opts):
            images, mask = m.preprocess_image(batch)
            outs.append(m.detr(images.tensor, mask, m.prepare_targets(batch, images))[0])
    assert "group_outputs" in outs[1] and "dn_outputs" in outs[1]
    for key in ("pred_logits", "pred_boxes"):
        assert outs[1][key].shape == outs[0][key].shape
        assert torch.allclose(outs[0][key], outs[1][key], atol=1e-5)


def test_checkpoints_load_strictly_both_ways_and_resume_restores():
    plain = build_tiny_model()
    opts = build_tiny_model(seed=1, **OPTIONS)
    init = {
        k: v.clone() for k, v in opts.state_dict().items() if k.startswith(TRAINING_ONLY_PREFIX)
    }
    assert init and not any(k.startswith(TRAINING_ONLY_PREFIX) for k in plain.state_dict())
    # an inference checkpoint (no training-only keys) into a model with the options
    opts.load_state_dict(plain.state_dict(), strict=True)
    for k, v in opts.state_dict().items():
        ref = init[k] if k.startswith(TRAINING_ONLY_PREFIX) else plain.state_dict()[k]
        assert torch.equal(v, ref), k
    # a checkpoint with them into a model without the options: they are ignored
    trained = build_tiny_model(seed=2, **OPTIONS)
    plain.load_state_dict(trained.state_dict(), strict=True)
    # resume: a model with the options gets them back
    again = build_tiny_model(seed=3, **OPTIONS)
    again.load_state_dict(trained.state_dict(), strict=True)
    for k, v in trained.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # another group count: the group queries keep their initialization
    other = build_tiny_model(seed=4, **{**OPTIONS, "MODEL.DETR.GROUPS": 2})
    key = TRAINING_ONLY_PREFIX + "group_query_embed.weight"
    before = other.state_dict()[key].clone()
    other.load_state_dict(trained.state_dict(), strict=True)
    assert torch.equal(other.state_dict()[key], before)


def test_official_checkpoint_loads_strictly_with_the_options(tmp_path):
    from detectron2.modeling import build_model
    from official_layout import official_cfg, write_official_checkpoint

    from detr_panoptic_d2.checkpoint import DetrCheckpointer, convert_detr_checkpoint

    src = str(tmp_path / "detr.pth")
    reference = write_official_checkpoint(src, panoptic=True)
    converted = str(tmp_path / "converted.pth")
    ckpt, _ = convert_detr_checkpoint(src, converted)
    cfg = official_cfg(True)
    cfg.MODEL.DETR.GROUPS, cfg.MODEL.DETR.DN.COPIES = 3, 5
    model = build_model(cfg).eval()
    model.load_state_dict(ckpt["model"], strict=True)
    incompatible = DetrCheckpointer(model)._load_model({"model": dict(ckpt["model"])})
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    ref = reference.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith(TRAINING_ONLY_PREFIX):
            assert torch.equal(v, ref[k]), k


def test_stage2_from_a_stage1_checkpoint_trained_with_the_options(tmp_path):
    stage1 = build_tiny_model(**OPTIONS)
    with EventStorage():
        sum(stage1(_batch()).values()).backward()
    path = str(tmp_path / "stage1.pth")
    torch.save({"model": stage1.state_dict()}, path)
    for opts in ({}, OPTIONS):  # stage 2 with or without the options in its config
        stage2 = build_tiny_model(mask_head=True, **opts, **{"MODEL.DETR.FROZEN_WEIGHTS": path})
        assert torch.equal(stage2.detr.query_embed.weight, stage1.detr.query_embed.weight)
        stage2.train()
        with EventStorage():
            losses = stage2(_batch())
        assert set(losses) == {"loss_mask", "loss_dice"}
        sum(losses.values()).backward()
        assert stage2.detr.query_embed.weight.grad is None


def test_config_validation_names_the_keys():
    for key, value in (
        ("MODEL.DETR.GROUPS", 0),
        ("MODEL.DETR.DN.COPIES", -1),
        ("MODEL.DETR.DN.LABEL_NOISE_RATIO", 1.5),
        ("MODEL.DETR.DN.BOX_NOISE_SCALE", -0.1),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_tiny_model(**{key: value})
