"""build_detr_resnet_backbone: Detectron2's ResNet, and DETR's DC5 exactly as torchvision dilates
it."""

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_resnet_backbone
from detectron2.modeling.backbone.resnet import ResNet

from detr_panoptic_d2.checkpoint import convert_torchvision_resnet
from detr_panoptic_d2.modeling import build_detr_resnet_backbone


def _cfg(depth=50, dilation=1):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.RES5_DILATION, r.STRIDE_IN_1X1, r.NORM = depth, dilation, False, "FrozenBN"
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if depth in (18, 34):
        r.RES2_OUT_CHANNELS = 64
    return cfg


def _randomized_torchvision(dilation, seed=0):
    torch.manual_seed(seed)
    tv = torchvision.models.resnet50(
        weights=None,
        replace_stride_with_dilation=[False, False, dilation],
        norm_layer=torchvision.ops.FrozenBatchNorm2d,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    return tv.eval()


def _torchvision_features(tv, x):
    y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i in range(4):
        y = getattr(tv, f"layer{i + 1}")(y)
        out[f"res{i + 2}"] = y
    return out


def test_registered_in_detectron2():
    assert BACKBONE_REGISTRY.get("build_detr_resnet_backbone") is build_detr_resnet_backbone


@pytest.mark.parametrize("depth", [18, 50])
def test_same_modules_and_weights_as_detectron2_without_dilation(depth):
    cfg = _cfg(depth)
    torch.manual_seed(0)
    ours = build_detr_resnet_backbone(cfg, ShapeSpec(channels=3))
    torch.manual_seed(0)
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(ours, ResNet) and type(ours).__name__ == "DetrResNet"  # + folded inference
    assert str(ours).replace("DetrResNet(", "ResNet(", 1) == str(theirs)
    assert ours.output_shape() == theirs.output_shape()


@pytest.mark.parametrize("dilation", [False, True])
def test_features_equal_torchvision(dilation):
    """DC5: res5 keeps stride 16 and only its blocks after the first are dilated, as torchvision's
    replace_stride_with_dilation (DETR's DC5 weights); Detectron2's own builder dilates every res5
    block."""
    tv = _randomized_torchvision(dilation)
    ours = build_detr_resnet_backbone(_cfg(50, 2 if dilation else 1), ShapeSpec(channels=3)).eval()
    state = {
        k[len("detr.backbone.") :]: v
        for k, v in convert_torchvision_resnet(tv.state_dict()).items()
    }
    ours.load_state_dict(state, strict=True)
    assert all(
        isinstance(m, FrozenBatchNorm2d) for n, m in ours.named_modules() if n.endswith(".norm")
    )
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = _torchvision_features(tv, x), ours(x)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        scale = expected[name].abs().max().item()  # activations grow to ~1e3 through random layers
        torch.testing.assert_close(got[name], expected[name], atol=1e-5 * scale, rtol=1e-5)
    assert got["res5"].shape[-2:] == ((6, 8) if dilation else (3, 4))
    assert ours.res5[0].conv2.dilation == (1, 1) and ours.res5[1].conv2.dilation == (
        (2, 2) if dilation else (1, 1)
    )


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="MODEL.RESNETS.RES5_DILATION"):
        build_detr_resnet_backbone(_cfg(18, 2), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="MODEL.RESNETS.DEPTH"):
        build_detr_resnet_backbone(_cfg(42), ShapeSpec(channels=3))
