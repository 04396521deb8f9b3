"""torchvision ResNet state dict → Detectron2 backbone checkpoint (no network: weights=None
models)."""

import importlib.util
import os

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_resnet_backbone

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.checkpoint import (
    convert_torchvision_resnet,
    rename_torchvision_resnet_key,
    save_d2_checkpoint,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(depth):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _random_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize(
    "src,dst",
    [
        ("conv1.weight", "stem.conv1.weight"),
        ("bn1.running_var", "stem.conv1.norm.running_var"),
        ("layer1.0.conv3.weight", "res2.0.conv3.weight"),
        ("layer2.3.bn2.bias", "res3.3.conv2.norm.bias"),
        ("layer3.0.downsample.0.weight", "res4.0.shortcut.weight"),
        ("layer4.0.downsample.1.running_mean", "res5.0.shortcut.norm.running_mean"),
        ("fc.weight", None),
        ("layer1.0.bn1.num_batches_tracked", None),
    ],
)
def test_rename(src, dst):
    assert rename_torchvision_resnet_key(src) == dst


def test_resnet18_features_equal_torchvision():
    tv = _random_bn(torchvision.models.resnet18(weights=None)).eval()
    sd = convert_torchvision_resnet(tv.state_dict())
    assert not any("fc" in k or "num_batches_tracked" in k for k in sd)
    assert all(k.startswith("detr.backbone.") for k in sd)
    d2 = build_resnet_backbone(_cfg(18), ShapeSpec(channels=3)).eval()
    d2.load_state_dict({k[len("detr.backbone.") :]: v for k, v in sd.items()}, strict=True)
    x = torch.randn(2, 3, 75, 101)
    with torch.no_grad():
        feats = d2(x)
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        for i, name in enumerate(("res2", "res3", "res4", "res5")):
            y = getattr(tv, f"layer{i + 1}")(y)
            assert feats[name].shape == y.shape
            assert torch.allclose(feats[name], y, atol=1e-5, rtol=1e-5), name


def test_resnet50_key_set_matches_detectron2():
    sd = convert_torchvision_resnet(torchvision.models.resnet50(weights=None).state_dict())
    d2 = build_resnet_backbone(_cfg(50), ShapeSpec(channels=3))
    assert set(sd) == {"detr.backbone." + k for k in d2.state_dict()}
    assert all(sd["detr.backbone." + k].shape == v.shape for k, v in d2.state_dict().items())


def test_errors():
    sd = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(KeyError, match="layer1.0.foo.weight"):
        convert_torchvision_resnet({**sd, "layer1.0.foo.weight": torch.zeros(1)})
    del sd["layer2.1.bn2.running_mean"]
    with pytest.raises(KeyError, match="res3.1.conv2.norm.running_mean"):
        convert_torchvision_resnet(sd)


def test_checkpoint_loads_as_model_weights(tmp_path):
    """The saved .pth is MODEL.WEIGHTS for a plugin model: DetectionCheckpointer puts it in the
    backbone."""
    tv = _random_bn(torchvision.models.resnet18(weights=None), 1)
    src = str(tmp_path / "resnet18.pth")
    torch.save(tv.state_dict(), src)
    out = str(tmp_path / "R-18.pth")
    spec = importlib.util.spec_from_file_location(
        "tool", os.path.join(ROOT, "tools", "convert_torchvision_resnet.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--source-model", src, "--output-model", out]) == 0

    cfg = _cfg(18)
    cfg.MODEL.META_ARCHITECTURE = "DetrPanoptic"
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD, d.NUM_OBJECT_QUERIES = (
        128,
        8,
        1,
        1,
        64,
        5,
    )
    d.NUM_CLASSES = 3
    model = build_model(cfg)
    DetectionCheckpointer(model).load(out)
    expected = convert_torchvision_resnet(tv.state_dict())
    own = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(own[k], v), k

    with pytest.raises(ValueError, match=r"\.pth"):
        save_d2_checkpoint(expected, str(tmp_path / "x.pkl"), "test")
