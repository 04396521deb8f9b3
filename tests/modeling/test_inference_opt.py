"""Inference fast paths: BatchNorm folded into the backbone's convolutions, the mask head's fast
upsampler kernel, and bf16 / fp16 inference (what they compute; when the model makes and drops
them: test_inference_plan.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detr_test_utils import (
    NUM_QUERIES,
    build_tiny_model,
    every_query_outputs,
    make_input,
    tiny_cfg,
)

from detr_panoptic_d2.engine import build_detr_optimizer
from detr_panoptic_d2.modeling import MaskHeadSmallConv, build_detr_resnet_backbone
from detr_panoptic_d2.modeling.backbone import DetrResNet
from detr_panoptic_d2.modeling.inference_opt import FoldedResNet, fold_conv_norm, precision_dtype
from detr_panoptic_d2.modeling.inference_plan import InferencePlan
from detr_panoptic_d2.modeling.mask_upsampler import UpsamplerWeights, up2_conv_weight


def _randomize_norms_(module, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (a fresh FrozenBN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module


def _backbone(depth=50, norm="FrozenBN", freeze_at=0, dilation=1):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.STRIDE_IN_1X1, r.RES5_DILATION = depth, norm, False, dilation
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth in (18, 34):
        r.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    torch.manual_seed(0)
    return _randomize_norms_(build_detr_resnet_backbone(cfg, ShapeSpec(channels=3)))


def _reference_features(backbone, x):
    """Detectron2's own forward (separate norm ops), as in training."""
    with torch.no_grad():
        return super(DetrResNet, backbone).forward(x)


# ---- folding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "depth,norm,dilation", [(50, "FrozenBN", 1), (18, "BN", 1), (50, "FrozenBN", 2)]
)
def test_folded_backbone_equals_detectron2_forward(depth, norm, dilation):
    backbone = _backbone(depth, norm, dilation=dilation).eval()
    assert FoldedResNet.supports(backbone)
    x = torch.randn(2, 3, 67, 93)  # odd sizes: every stride rounds
    ref = _reference_features(backbone, x)
    with torch.inference_mode():
        out = FoldedResNet(backbone)(x)
    assert out.keys() == ref.keys()
    for k in ref:  # float32 rounding of a different summation order, relative to the feature scale
        assert out[k].is_contiguous(memory_format=torch.channels_last)
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(out[k], ref[k], atol=1e-5 * scale, rtol=0)


def test_fold_conv_norm_is_the_affine_map():
    backbone = _backbone(18)
    conv = backbone.stem.conv1
    w, b = fold_conv_norm(conv, memory_format=torch.contiguous_format)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(
            F.conv2d(x, w, b, conv.stride, conv.padding), conv(x), atol=1e-5, rtol=1e-5
        )


def test_folding_never_touches_parameters_or_state_dict():
    backbone = _backbone(18).eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.inference_mode():
        FoldedResNet(backbone)(torch.randn(1, 3, 64, 64))
        FoldedResNet(backbone, torch.bfloat16)(torch.randn(1, 3, 64, 64))
    after = backbone.state_dict()
    assert after.keys() == before.keys()
    assert all(
        torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in after
    )
    assert not any("fold" in n for n, _ in backbone.named_modules())


def test_module_forward_is_detectron2s_in_every_mode():
    """The backbone module itself never folds (no path chosen by autograd state or mode): eval
    mode without autograd gives Detectron2's forward exactly; the folded copy is a separate
    object."""
    backbone = _backbone(18, "BN").eval()
    x = torch.randn(1, 3, 64, 64)
    ref = _reference_features(backbone, x.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        out = backbone(x)  # channels-last on the CPU
    for k in ref:
        assert torch.equal(out[k], ref[k])


# ---- the mask head's upsampler
# ------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(5, 7), (1, 4), (6, 3)])
def test_up2_conv_weight_is_upsample_then_conv(h, w):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    out = F.conv_transpose2d(x, up2_conv_weight(weight), stride=2, padding=1)
    torch.testing.assert_close(out, ref)


def _detr_upsampler(head, x, fpns, batch_idx):
    """DETR's MaskHeadSmallConv.forward: nearest interpolation to each FPN size, add, 3x3 conv."""
    x = F.relu(head.gn1(head.lay1(x)))
    x = F.relu(head.gn2(head.lay2(x)))
    for fpn, adapter, lay, gn in zip(
        fpns,
        (head.adapter1, head.adapter2, head.adapter3),
        (head.lay3, head.lay4, head.lay5),
        (head.gn3, head.gn4, head.gn5),
    ):
        cur = adapter(fpn)[batch_idx]
        x = cur + F.interpolate(x, size=cur.shape[-2:], mode="nearest")
        x = F.relu(gn(lay(x)))
    return head.out_lay(x)


@pytest.mark.parametrize(
    "sizes",
    [
        [(4, 5), (8, 10), (16, 20), (32, 40)],  # exact 2x (padded to 32)
        [(4, 6), (7, 11), (13, 21), (26, 42)],  # 2s - 1 on both axes (odd image sizes)
        [(4, 5), (4, 5), (8, 9), (15, 18)],  # DC5 (same size), then odd on one axis
        [(3, 3), (7, 5), (10, 12), (20, 24)],  # other ratios: DETR's formulation
    ],
)
@pytest.mark.parametrize("grad", [False, True])
def test_upsampler_equals_detr_formulation(sizes, grad):
    torch.manual_seed(0)
    head = MaskHeadSmallConv(24, [32, 16, 8], 128)
    with torch.no_grad():  # non-trivial biases and norms
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    (h, w), fine = sizes[0], sizes[1:]
    src = torch.randn(2, 16, h, w, generator=g)
    maps = torch.rand(5, 8, h, w, generator=g)
    fpns = [torch.randn(2, c, *s, generator=g) for c, s in zip((32, 16, 8), fine)]
    batch_idx = torch.tensor([0, 0, 1, 1, 1])
    x = torch.cat([src[batch_idx], maps], 1)
    ref = _detr_upsampler(head, x, fpns, batch_idx)
    with torch.set_grad_enabled(grad):
        split = head.forward_split(src, maps, fpns, batch_idx)  # from the parameters
        detr = head(x, fpns, batch_idx)  # the module's own forward: DETR's formulation
    with torch.inference_mode():  # inference: prepared weights, inputs cast, sums in place
        prepared = head.forward_split(
            src, maps, fpns, batch_idx, weights=UpsamplerWeights(head, 16, torch.float32)
        )
    assert split.shape == ref.shape == (5, 1, *fine[-1]) and split.dtype == torch.float32
    torch.testing.assert_close(split, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prepared, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(detr, ref)
    if grad:  # training: the same gradients as DETR's formulation
        g_ref = torch.autograd.grad(ref.square().sum(), list(head.parameters()))
        g_new = torch.autograd.grad(split.square().sum(), list(head.parameters()))
        for a, b in zip(g_new, g_ref):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_mask_head_rows_independent_of_chunking(monkeypatch):
    import detr_panoptic_d2.modeling.mask_upsampler as mask_upsampler

    model = build_tiny_model(mask_head=True).eval()
    with torch.no_grad():
        images, mask = model.preprocess_image([make_input(64, 96, 2), make_input(96, 64, 1, 1)])
        _, features = model.detr(images.tensor, mask)
        b = torch.tensor([1, 0, 1, 0, 0, 1])
        q = torch.tensor([7, 3, 0, 9, 1, 2])
        full = model.mask_head(features, b, q)
        monkeypatch.setattr(mask_upsampler, "CHUNK_PIXELS", 1)  # one row per chunk
        one = model.mask_head(features, b, q)
    torch.testing.assert_close(one, full, atol=1e-5, rtol=1e-5)


# ---- the whole model: eval after training, precision
# ---------------------------------------------------
def _reference_inference(model, batch):
    """The model's outputs without any fast path: autograd on (modules as in training), float32."""
    outputs, masks = every_query_outputs(model, batch, planned=False)
    return outputs, masks.view(len(batch), outputs["pred_logits"].shape[1], -1)


def _fast_inference(model, batch):
    outputs, masks = every_query_outputs(model, batch, planned=True)
    return outputs, masks.view(len(batch), outputs["pred_logits"].shape[1], -1)


def _close(fast, ref, atol):
    for k in ref[0]:
        torch.testing.assert_close(fast[0][k], ref[0][k], atol=atol, rtol=atol)
    torch.testing.assert_close(fast[1], ref[1], atol=atol, rtol=atol)


def test_evaluation_during_training_uses_current_weights():
    """Periodic evaluation: eval → train steps → eval sees the updated weights (BN statistics
    included)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(mask_head=True, **{"MODEL.RESNETS.NORM": "BN"}))
    opt = build_detr_optimizer(tiny_cfg(), model)
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    for _ in range(2):
        model.eval()
        fast, ref = _fast_inference(model, batch), _reference_inference(model, batch)
        _close(fast, ref, 2e-4)
        model.train()
        for _ in range(2):
            with EventStorage():
                losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    model.eval()
    after = _fast_inference(model, batch)
    assert not torch.allclose(after[1], fast[1])
    _close(after, _reference_inference(model, batch), 2e-4)


def test_eval_outputs_unchanged_by_fast_paths(tiny_mask_model):
    model = tiny_mask_model.eval()
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    _close(_fast_inference(model, batch), _reference_inference(model, batch), 1e-4)


def test_bf16_inference_close_to_fp32_and_weights_untouched():
    cfg = dict(mask_head=True, **{"MODEL.DETR.TEST.PRECISION": "bf16"})
    model = build_tiny_model(**cfg).eval()
    assert model.test_dtype == torch.bfloat16
    _randomize_norms_(model.detr.backbone)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    ref = _reference_inference(model, batch)
    fast = _fast_inference(model, batch)
    assert all(v.dtype == torch.float32 for v in fast[0].values())
    assert fast[1].dtype == torch.float32  # mask logits for the merge
    for k in ref[0]:  # bf16: ~3 significant digits through the whole network
        torch.testing.assert_close(fast[0][k], ref[0][k], atol=0.1, rtol=0.05)
    corr = torch.corrcoef(torch.stack([fast[1].flatten(), ref[1].flatten()]))[0, 1]
    assert corr > 0.99, corr
    after = model.state_dict()
    assert all(torch.equal(after[k], state[k]) and after[k].dtype == state[k].dtype for k in state)
    with torch.no_grad():
        (res,) = model([make_input(64, 96, 2)])
    assert res["panoptic_seg"][0].shape == (64, 96)


def test_fp16_plan_runs():
    """fp16 runs on the CPU as on CUDA (slowly on the CPU); the code path is device-agnostic."""
    model = build_tiny_model(mask_head=True).eval()
    plan = InferencePlan(model.detr, torch.float16, mask_head=model.mask_head)
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    with torch.inference_mode():
        outputs, features = plan.run_body(model.detr, images, mask)
        rows = (torch.zeros(3, dtype=torch.long), torch.arange(3))
        masks = model.mask_head(features, *rows, **plan.mask_head_kwargs())
    assert features["src_proj"].dtype == torch.float16
    assert outputs["pred_logits"].dtype == torch.float32 and masks.dtype == torch.float32
    assert torch.isfinite(masks).all() and torch.isfinite(outputs["pred_boxes"]).all()


def test_precision_config_checked():
    assert precision_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="MODEL.DETR.TEST.PRECISION"):
        build_model(tiny_cfg(**{"MODEL.DETR.TEST.PRECISION": "int8"}))
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION"):
        build_model(tiny_cfg(**{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": "fp8"}))
    # fp16 inference and float16 AMP are accepted on the CPU (slow there, with a warning)
    model = build_model(tiny_cfg(**{"MODEL.DETR.TEST.PRECISION": "fp16"}))
    assert model.test_dtype == torch.float16
    build_model(tiny_cfg(**{"SOLVER.AMP.ENABLED": True, "SOLVER.AMP.PRECISION": "float16"}))


def test_inference_copies_are_not_in_the_checkpoint():
    model = build_tiny_model(mask_head=True, **{"MODEL.DETR.TEST.PRECISION": "bf16"}).eval()
    keys = set(model.state_dict())
    with torch.no_grad():
        model([make_input(64, 96, 2)])
    assert set(model.state_dict()) == keys
    assert all(v.dtype != torch.bfloat16 for v in model.state_dict().values())
    clone = copy.deepcopy(model)
    assert clone.test_dtype == torch.bfloat16
    assert NUM_QUERIES == model.detr.num_queries


def _pixel_classes(panoptic_seg):
    """(H, W) contiguous class of each pixel of a panoptic output, -1 on void."""
    ids, info = panoptic_seg
    classes = torch.full_like(ids, -1, dtype=torch.int64)
    for s in info:
        classes[ids == s["id"]] = s["category_id"]
    return classes


def test_fp16_inference_on_cpu_agrees_with_fp32():
    """MODEL.DETR.TEST.PRECISION fp16 on the CPU: the body in float16 (about 3 significant
    digits through the network), the heads, attention-map softmax and mask logits in float32.
    Tolerances measured on this tiny model with margin: logits within 0.08 (max diff 0.024, on
    logits scaled x 8), boxes within 1e-3 (max diff 1.3e-4), at least 97 % of the pixels of the
    panoptic outputs with the same class (all of them here)."""
    opts = {"MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD": 0.5}
    fp32 = build_tiny_model(mask_head=True, **opts).eval()
    fp16 = build_tiny_model(mask_head=True, **opts, **{"MODEL.DETR.TEST.PRECISION": "fp16"})
    fp16.load_state_dict(fp32.state_dict())
    fp16.eval()
    for m in (fp32, fp16):
        with torch.no_grad():
            m.detr.class_embed.weight.mul_(8.0)  # confident, varied queries: segments to compare
    assert fp16.test_dtype == torch.float16
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    with torch.inference_mode():
        images, mask = fp32.preprocess_image(batch)
        ref, _ = fp32.run_body(images.tensor, mask)
        got, features = fp16.run_body(images.tensor, mask)
    assert features["src_proj"].dtype == torch.float16
    assert got["pred_logits"].dtype == torch.float32
    torch.testing.assert_close(got["pred_logits"], ref["pred_logits"], atol=0.08, rtol=0)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], atol=1e-3, rtol=0)
    res32, res16 = fp32(batch), fp16(batch)
    for a, b in zip(res32, res16):
        ca, cb = _pixel_classes(a["panoptic_seg"]), _pixel_classes(b["panoptic_seg"])
        assert (ca >= 0).any()  # segments to compare
        agreement = (ca == cb).float().mean().item()
        assert agreement >= 0.97, agreement
