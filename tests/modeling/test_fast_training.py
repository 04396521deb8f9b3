"""The training step's exact levers against the paths they replace, on fixed batches:

* ``MODEL.DETR.BATCHED_CRITERION`` (every layer and query group matched in one matcher call, each
  loss computed for all layers at once) against ``False`` (one matcher call and one set of loss
  operations per layer): the same assignments exactly, the same loss keys, metrics, losses and
  gradients up to float32 rounding (the sums run in another order: a few ulps; rtol 1e-5 on the
  losses, 1e-4 on the gradients, relative to each parameter's largest gradient entry);
* ``SOLVER.OPTIMIZER_IMPL`` fused / foreach against torch's default, with the full-model gradient
  clipping: the same parameters after a few steps up to float32 rounding (rtol 1e-5, atol 1e-7),
  also with a float16 gradient scaler, after a resume, and the fallback where no fused kernel is.
"""

import copy

import numpy as np
import pytest
import torch
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input, tiny_cfg

from detr_panoptic_d2.config import validate_config
from detr_panoptic_d2.engine import build_detr_optimizer
from detr_panoptic_d2.modeling.matcher import HungarianMatcher

STAGE1 = {"MODEL.DETR.DEC_LAYERS": 3, "MODEL.DETR.DROPOUT": 0.0}
OPTIONS = {
    "plain": STAGE1,
    "groups and denoising": {**STAGE1, "MODEL.DETR.GROUPS": 3, "MODEL.DETR.DN.COPIES": 2},
    "denoising, no deep supervision": {
        **STAGE1,
        "MODEL.DETR.DN.COPIES": 3,
        "MODEL.DETR.DEEP_SUPERVISION": False,
    },
}


def _batch(empty=False):
    # 3, 0 (or 2) and 5 targets: padding denoising slots, and an image without targets
    return [
        make_input(64, 96, 3),
        make_input(96, 64, 0 if empty else 2, seed=1),
        make_input(64, 64, 5, seed=2),
    ]


def _losses_and_grads(batched, batch, mask_head=False, **options):
    model = build_tiny_model(
        mask_head=mask_head, **options, **{"MODEL.DETR.BATCHED_CRITERION": batched}
    ).train()
    torch.manual_seed(1)  # the same denoising noise
    with EventStorage() as storage:
        losses = model(batch)
        sum(losses.values()).backward()
        metrics = {k: v[0] for k, v in storage.latest().items()}
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads, metrics


def _assert_same(old, new):
    (l_old, g_old, m_old), (l_new, g_new, m_new) = old, new
    assert list(l_new) == list(l_old)
    for k in l_old:
        torch.testing.assert_close(l_new[k], l_old[k], rtol=1e-5, atol=1e-6, msg=k)
    assert m_new.keys() == m_old.keys()
    for k in m_old:
        assert m_new[k] == pytest.approx(m_old[k], rel=1e-5, abs=1e-6), k
    assert g_new.keys() == g_old.keys()
    for k in g_old:
        scale = float(g_old[k].abs().max())
        torch.testing.assert_close(g_new[k], g_old[k], rtol=1e-4, atol=1e-5 * scale + 1e-9, msg=k)


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("empty", [False, True])
def test_batched_criterion_equals_per_layer_losses(name, empty):
    batch = _batch(empty)
    _assert_same(
        _losses_and_grads(False, batch, **OPTIONS[name]),
        _losses_and_grads(True, batch, **OPTIONS[name]),
    )


def test_batched_criterion_with_mask_head_in_stage1_and_stage2(tmp_path):
    batch = _batch()
    opts = {**STAGE1, "MODEL.DETR.GROUPS": 2}
    _assert_same(
        _losses_and_grads(False, batch, mask_head=True, **opts),
        _losses_and_grads(True, batch, mask_head=True, **opts),
    )
    path = tmp_path / "stage1.pth"
    torch.save({"model": build_tiny_model(**STAGE1).state_dict()}, path)
    stage2 = {**STAGE1, "MODEL.DETR.FROZEN_WEIGHTS": str(path)}
    _assert_same(
        _losses_and_grads(False, batch, mask_head=True, **stage2),
        _losses_and_grads(True, batch, mask_head=True, **stage2),
    )


@pytest.mark.parametrize("groups", [1, 3])
def test_match_layers_gives_each_layers_assignment(groups):
    g = torch.Generator().manual_seed(0)
    layers, bsz, n, k = 4, 3, 5 * groups, 6
    logits = torch.randn(layers, bsz, n, k + 1, generator=g)
    boxes = torch.rand(layers, bsz, n, 4, generator=g) * 0.5 + 0.25
    counts = [4, 0, 7]  # 7 > 5 queries per group: only 5 of them are matched
    targets = [
        {"labels": torch.randint(0, k, (c,), generator=g), "boxes": torch.rand(c, 4) * 0.4 + 0.3}
        for c in counts
    ]
    matcher = HungarianMatcher()
    layer, image, query, target = matcher.match_layers(logits, boxes, targets, groups)
    offsets = np.cumsum([0] + counts[:-1])
    for i in range(layers):
        per_image = matcher({"pred_logits": logits[i], "pred_boxes": boxes[i]}, targets, groups)
        for b, (q, j) in enumerate(per_image):
            sel = (layer == i) & (image == b)
            assert torch.equal(query[sel], q) and torch.equal(target[sel] - offsets[b], j)
    assert len(layer) == layers * groups * sum(min(5, c) for c in counts)


def test_config_keys_are_validated():
    validate_config(tiny_cfg())
    for key, bad in (("MODEL.DETR.BATCHED_CRITERION", 1), ("SOLVER.OPTIMIZER_IMPL", "apex")):
        cfg = tiny_cfg(**{key: bad})
        with pytest.raises(ValueError, match=key):
            validate_config(cfg)


# ---- optimizer -----------------------------------------------------------------------------------


def _optimizer(impl, model, clip=True):
    cfg = tiny_cfg(
        **{
            "SOLVER.OPTIMIZER_IMPL": impl,
            "SOLVER.BASE_LR": 1e-3,
            "SOLVER.WEIGHT_DECAY": 1e-4,
            "SOLVER.CLIP_GRADIENTS.ENABLED": clip,
        }
    )
    return build_detr_optimizer(cfg, model)


def _set_grads(model, step):
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.01 * (step + 1)


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("clip", [True, False])
def test_optimizer_implementations_give_the_same_steps(impl, clip):
    ref_model = build_tiny_model()
    model = copy.deepcopy(ref_model)
    ref, opt = _optimizer("auto", ref_model, clip), _optimizer(impl, model, clip)
    assert (opt.defaults.get("fused"), opt.defaults.get("foreach")) == {
        "fused": (True, None),
        "foreach": (None, True),
        "for-loop": (None, False),
    }[impl]
    for step in range(3):
        _set_grads(ref_model, step)
        _set_grads(model, step)
        ref.step()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_fused_clipping_under_a_float16_gradient_scaler_clips_the_true_gradients():
    ref_model = build_tiny_model()
    model = copy.deepcopy(ref_model)
    for m, impl in ((ref_model, "for-loop"), (model, "fused")):
        opt = _optimizer(impl, m)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        scale = scaler.scale(torch.ones(()))  # what backward of the scaled loss multiplies by
        _set_grads(m, 0)
        for p in m.parameters():
            p.grad *= scale
        scaler.step(opt)
        scaler.update()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_resume_keeps_the_configured_implementation():
    model = build_tiny_model()
    old = _optimizer("auto", model)
    _set_grads(model, 0)
    old.step()
    new = _optimizer("fused", model)
    new.load_state_dict(old.state_dict())
    assert all(g["fused"] and not g["foreach"] for g in new.param_groups)
    new.step()  # the fused kernel takes the loaded state
    back = _optimizer("auto", model)
    back.load_state_dict(new.state_dict())
    assert all(not g["fused"] for g in back.param_groups)
    back.step()


def test_fused_falls_back_to_foreach(monkeypatch):
    class NoFused(torch.optim.AdamW):
        def __init__(self, *args, fused=None, **kwargs):
            if fused:
                raise RuntimeError("no fused kernel here")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", NoFused)
    opt = _optimizer("fused", build_tiny_model())
    assert isinstance(opt, NoFused) and opt.defaults["foreach"] is True
