"""DETR's mask head: attention maps, subset-of-queries computation, stage-2 freezing."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detr_test_utils import NUM_QUERIES, build_tiny_model, make_input, tiny_cfg

from detr_panoptic_d2.modeling import MaskHeadSmallConv, MHAttentionMap


# ---- MHAttentionMap ------------------------------------------------------------------------------
def _attention_inputs(seed=0, q=4, c=16, h=3, w=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[2:, :] = True
    mask[:, 4:] = True
    return torch.randn(q, c, generator=g), torch.randn(c, h, w, generator=g), mask


def test_attention_map_shape_normalization_and_padding():
    torch.manual_seed(0)
    att = MHAttentionMap(16, 16, num_heads=4)
    q, k, mask = _attention_inputs()
    out = att(q, k, mask)
    assert out.shape == (4, 4, 3, 5)  # (Q, M, h, w)
    torch.testing.assert_close(
        out.sum((1, 2, 3)), torch.ones(4)
    )  # joint softmax over heads x positions
    assert (out[:, :, mask] == 0).all()
    assert (out[:, :, ~mask] > 0).all()


def test_attention_map_against_hand_einsum():
    torch.manual_seed(1)
    hidden, heads = 16, 4
    att = MHAttentionMap(16, hidden, heads)
    with torch.no_grad():  # non-zero biases so that they are exercised
        att.q_linear.bias.normal_()
        att.k_linear.bias.normal_()
    q, k, mask = _attention_inputs(seed=2)
    out = att(q, k, mask)
    assert att.normalize_fact == pytest.approx((hidden / heads) ** -0.5)
    qp = q @ att.q_linear.weight.T + att.q_linear.bias  # (Q, hidden)
    kp = torch.einsum("dc,chw->dhw", att.k_linear.weight, k) + att.k_linear.bias[:, None, None]
    c = hidden // heads
    logits = torch.empty(q.shape[0], heads, 3, 5)
    for n in range(heads):
        logits[:, n] = (
            torch.einsum("qc,chw->qhw", qp[:, n * c : (n + 1) * c], kp[n * c : (n + 1) * c])
            / c**0.5
        )
    logits[:, :, mask] = float("-inf")
    expected = logits.flatten(1).softmax(-1).view_as(logits)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_attention_map_scaled_to_uniform():
    """SCALE_ATTENTION_MAPS: DETR's maps times (heads x non-padded positions); uniform attention
    gives 1."""
    q, k, mask = _attention_inputs(seed=3)
    torch.manual_seed(2)
    detr = MHAttentionMap(16, 16, num_heads=4)
    scaled = MHAttentionMap(16, 16, num_heads=4, scale_to_uniform=True)
    scaled.load_state_dict(detr.state_dict())
    valid = int((~mask).sum())
    assert valid == 8
    torch.testing.assert_close(scaled(q, k, mask), detr(q, k, mask) * (4 * valid))
    torch.testing.assert_close(
        scaled(q, k), detr(q, k) * (4 * 15)
    )  # no padding mask: all 3 x 5 positions
    with torch.no_grad():
        scaled.q_linear.weight.zero_()  # every logit 0: uniform attention over the valid positions
    out = scaled(q, k, mask)
    torch.testing.assert_close(out[:, :, ~mask], torch.ones(4, 4, valid))
    assert (out[:, :, mask] == 0).all()


def test_mask_head_attention_scale_from_config():
    assert not tiny_cfg().MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS  # DETR's head by default
    for flag in (False, True):
        head = build_tiny_model(
            mask_head=True, **{"MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS": flag}
        ).mask_head
        assert head.bbox_attention.scale_to_uniform is flag


# ---- MaskHeadSmallConv / DetrMaskHead ------------------------------------------------------------
def test_group_norms_have_8_groups():
    head = MaskHeadSmallConv(136, [256, 128, 64], 128)
    gns = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [gn.num_channels for gn in gns] == [136, 64, 32, 16, 8]
    assert all(gn.num_groups == 8 for gn in gns)


def test_invalid_hidden_dim_rejected():
    cfg = tiny_cfg(mask_head=True, **{"MODEL.DETR.HIDDEN_DIM": 96, "MODEL.DETR.NHEADS": 8})
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        build_model(cfg)


def _detr_reference_masks(model, state):
    """DETR's batched DETRsegm computation (every query of every image) from the module's own
    weights."""
    head = model.mask_head
    att, conv = head.bbox_attention, head.mask_head
    hs, memory, mask = state["box_embed"], state["memory"], state["memory_mask"]
    bsz, n = hs.shape[:2]
    # MHAttentionMap, batched
    qh = att.q_linear(hs).view(bsz, n, att.num_heads, -1)
    k = F.conv2d(memory, att.k_linear.weight[:, :, None, None], att.k_linear.bias)
    kh = k.view(bsz, att.num_heads, -1, *k.shape[-2:])
    w = torch.einsum("bqnc,bnchw->bqnhw", qh * att.normalize_fact, kh)
    w = w.masked_fill(mask[:, None, None], float("-inf"))
    bbox_mask = F.softmax(w.flatten(2), dim=-1).view(w.shape)

    def expand(t, length):
        return t.unsqueeze(1).repeat(1, length, 1, 1, 1).flatten(0, 1)

    x = torch.cat([expand(state["src_proj"], n), bbox_mask.flatten(0, 1)], 1)
    x = F.relu(conv.gn1(conv.lay1(x)))
    x = F.relu(conv.gn2(conv.lay2(x)))
    fpns = [state["backbone"][f] for f in head.in_features]
    for fpn, adapter, lay, gn in zip(
        fpns,
        (conv.adapter1, conv.adapter2, conv.adapter3),
        (conv.lay3, conv.lay4, conv.lay5),
        (conv.gn3, conv.gn4, conv.gn5),
    ):
        cur = adapter(fpn)
        cur = expand(cur, x.size(0) // cur.size(0))
        x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
        x = F.relu(gn(lay(x)))
    return conv.out_lay(x).view(bsz, n, *x.shape[-2:])


@pytest.fixture
def mask_model_state():
    model = build_tiny_model(mask_head=True).eval()
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    with torch.no_grad():
        images, mask = model.preprocess_image(batch)
        _, features = model.detr(images.tensor, mask)
    return model, features


def test_mask_head_full_and_subset_equal_detr_batched(mask_model_state):
    model, state = mask_model_state
    bsz, n = 2, NUM_QUERIES
    b_all = torch.arange(bsz).repeat_interleave(n)
    q_all = torch.arange(n).repeat(bsz)
    with torch.no_grad():
        full = model.mask_head(state, b_all, q_all)
        ref = _detr_reference_masks(model, state)
        # subset, images interleaved and queries out of order
        b_sub = torch.tensor([1, 0, 1, 0, 0])
        q_sub = torch.tensor([7, 3, 0, 9, 1])
        sub = model.mask_head(state, b_sub, q_sub)
        one = model.mask_head(state, torch.tensor([1]), torch.tensor([4]))
        none = model.mask_head(
            state, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        )
    assert full.shape == (bsz * n, 96 // 4, 96 // 4)
    torch.testing.assert_close(full.view(bsz, n, 24, 24), ref, atol=1e-5, rtol=1e-5)
    assert sub.shape == (5, 24, 24)
    torch.testing.assert_close(sub, full.view(bsz, n, 24, 24)[b_sub, q_sub], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one[0], full[n + 4], atol=1e-5, rtol=1e-5)
    assert none.shape == (0, 24, 24)


def _train_step(model, batch):
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    return losses


def test_train_matched_only_gives_same_losses_and_gradients():
    over = {"MODEL.DETR.DROPOUT": 0.0}
    batch = [make_input(64, 96, 3), make_input(96, 64, 1, seed=1)]
    a = build_tiny_model(mask_head=True, **over, **{"MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY": True})
    b = build_tiny_model(mask_head=True, **over, **{"MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY": False})
    la, lb = _train_step(a, batch), _train_step(b, batch)
    assert set(la) == set(lb) and {"loss_mask", "loss_dice"} <= set(la)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], atol=1e-6, rtol=1e-5)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in pa.items():
        if not p.requires_grad:
            continue
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, pb[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_inference_with_mask_head(tiny_mask_model):
    tiny_mask_model.eval()
    tiny_mask_model.postprocessor.object_mask_threshold = 0.0  # keep every non-no-object query
    x = make_input(64, 96, 2, height=50, width=70)
    with torch.no_grad():
        (res,) = tiny_mask_model([x])
        tiny_mask_model.postprocessor.masks_for_kept_only = False
        (res_all,) = tiny_mask_model([x])
    inst = res["instances"]
    assert inst.image_size == (50, 70) and inst.pred_masks.shape == (len(inst), 50, 70)
    assert inst.pred_masks.dtype == torch.bool
    seg, info = res["panoptic_seg"]
    assert seg.shape == (50, 70) and len(info) > 0
    seg_all, info_all = res_all["panoptic_seg"]
    assert torch.equal(seg, seg_all) and info == info_all
    assert torch.equal(inst.pred_masks, res_all["instances"].pred_masks)

    # the fast path (masks only for the queries that reach an output) equals computing every mask,
    # here with a strict subset: class 2 is stuff (no instances) and only some queries pass the
    # threshold
    tiny_mask_model.postprocessor.is_thing[2] = False
    scores = torch.tensor([s["score"] for s in info])
    tiny_mask_model.postprocessor.object_mask_threshold = float(scores.median())
    outs = []
    for fast in (True, False):
        tiny_mask_model.postprocessor.masks_for_kept_only = fast
        with torch.no_grad():
            outs.append(tiny_mask_model([x])[0])
    (seg_f, info_f), (seg_a, info_a) = outs[0]["panoptic_seg"], outs[1]["panoptic_seg"]
    assert torch.equal(seg_f, seg_a) and info_f == info_a and 0 < len(info_f)
    assert torch.equal(outs[0]["instances"].pred_masks, outs[1]["instances"].pred_masks)


def test_inference_with_degenerate_predicted_boxes(tiny_mask_model):
    """detector_postprocess drops empty boxes; their masks must be dropped with them (no length
    mismatch)."""
    tiny_mask_model.eval()
    last = tiny_mask_model.detr.bbox_embed.layers[-1]
    with torch.no_grad():
        last.weight[2:] = 0
        last.bias[2:] = -30.0  # width and height ~1e-13: empty after scaling to pixels
        (res,) = tiny_mask_model([make_input(64, 96, 0, height=64, width=96)])
    assert len(res["instances"]) == 0 and res["instances"].pred_masks.shape == (0, 64, 96)


# ---- stage 2 -------------------------------------------------------------------------------------
@pytest.fixture
def stage1_checkpoint(tmp_path):
    stage1 = build_tiny_model(seed=0)
    path = tmp_path / "stage1.pth"
    torch.save({"model": stage1.state_dict(), "iteration": 10}, path)
    return stage1, path


def test_stage2_loads_freezes_and_trains_mask_head_only(stage1_checkpoint):
    stage1, path = stage1_checkpoint
    model = build_tiny_model(mask_head=True, seed=1, **{"MODEL.DETR.FROZEN_WEIGHTS": str(path)})
    s1 = stage1.state_dict()
    own = model.state_dict()
    det_keys = [k for k in own if not k.startswith("mask_head.")]
    assert all(k.startswith("detr.") for k in det_keys)
    assert set(det_keys) == set(s1)
    assert all(torch.equal(own[k], s1[k]) for k in det_keys)

    model.train()
    assert all(not sub.training for sub in model.detr.modules())
    assert model.mask_head.training
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("mask_head.") for n in trainable)
    assert trainable == {n for n, _ in model.mask_head.named_parameters(prefix="mask_head")}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    with EventStorage() as storage:
        losses = model(batch)
        latest = storage.latest()
    assert set(losses) == {
        "loss_mask",
        "loss_dice",
    }  # box losses of the frozen part are metrics only
    assert "loss_ce" in latest and "class_error" in latest
    sum(losses.values()).backward()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4
    )
    opt.step()
    after = model.state_dict()
    for k in det_keys:
        assert torch.equal(after[k], before[k]), k
    changed = [
        k for k in after if k.startswith("mask_head.") and not torch.equal(after[k], before[k])
    ]
    assert set(changed) == {k for k in after if k.startswith("mask_head.")}

    # frozen detection part in eval mode: no dropout, the detection outputs are deterministic in
    # train mode
    with torch.no_grad():
        images, mask = model.preprocess_image(batch)
        o1, _ = model.detr(images.tensor, mask)
        o2, _ = model.detr(images.tensor, mask)
    assert torch.equal(o1["pred_logits"], o2["pred_logits"])


def test_stage2_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_tiny_model(mask_head=True, **{"MODEL.DETR.FROZEN_WEIGHTS": str(path)})


def test_stage2_mismatched_checkpoint(tmp_path):
    state = build_tiny_model(seed=0).state_dict()
    missing = dict(state)
    del missing["detr.class_embed.bias"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="class_embed.bias"):
        build_tiny_model(
            mask_head=True, **{"MODEL.DETR.FROZEN_WEIGHTS": str(tmp_path / "missing.pth")}
        )

    extra = dict(state)
    extra["detr.transformer.bogus"] = torch.zeros(1)
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="transformer.bogus"):
        build_tiny_model(
            mask_head=True, **{"MODEL.DETR.FROZEN_WEIGHTS": str(tmp_path / "extra.pth")}
        )

    other = build_tiny_model(seed=0, **{"MODEL.DETR.NUM_CLASSES": 7}).state_dict()
    torch.save({"model": other}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="class_embed.weight"):
        build_tiny_model(
            mask_head=True, **{"MODEL.DETR.FROZEN_WEIGHTS": str(tmp_path / "shape.pth")}
        )
