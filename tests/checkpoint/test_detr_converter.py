"""Original DETR checkpoint → plugin checkpoint (no network, no reference code).

The synthetic original checkpoints are derived from the plugin's own R-50 models by an inverse
mapping written here independently of the converter (plugin names → DETR names, contiguous rows →
COCO-id rows), so a round trip must give back the exact weights.
"""

import importlib.util
import os
import re

import detectron2.data.datasets  # noqa: F401  (builtin metadata)
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from official_layout import official_args as _args
from official_layout import official_cfg as _cfg
from official_layout import randomized as _randomized
from official_layout import to_original as _to_original

from detr_panoptic_d2.checkpoint import (
    config_overrides,
    contiguous_id_map,
    convert_detr_checkpoint,
    convert_detr_state_dict,
    remap_class_rows,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def panoptic():
    """(plugin model with random weights, its original-format state dict)."""
    torch.manual_seed(0)
    model = _randomized(build_model(_cfg(True)).eval(), 1)
    original = _to_original(model.state_dict(), True, torch.Generator().manual_seed(2))
    return model, original


@pytest.fixture(scope="module")
def empty_panoptic_model():
    torch.manual_seed(3)
    return build_model(_cfg(True)).eval()


def _save_original(tmp_path, sd, name="detr.pth", **args):
    path = str(tmp_path / name)
    torch.save({"model": sd, "args": _args(**args)}, path)
    return path


def _inputs():
    g = torch.Generator().manual_seed(5)
    return [
        {
            "image": torch.randint(0, 256, (3, 54, 78), generator=g, dtype=torch.uint8),
            "height": 54,
            "width": 78,
        }
    ]


def _raw_outputs(model):
    with torch.no_grad():
        images, mask = model.preprocess_image(_inputs())
        out, features = model.detr(images.tensor, mask)
        n = out["pred_logits"].shape[1]
        masks = None
        if model.mask_head is not None:
            q = torch.arange(0, n, 10)  # a few queries: the mask head is the slow part on CPU
            masks = model.mask_head(features, torch.zeros(len(q), dtype=torch.long), q)
    return out["pred_logits"], out["pred_boxes"], masks


def test_original_schema_matches_detr(panoptic):
    """The synthetic checkpoint has the key schema of DETR's R-50 panoptic checkpoint."""
    _, original = panoptic
    assert original["detr.class_embed.weight"].shape == (251, 256)
    assert original["detr.query_embed.weight"].shape == (100, 256)
    assert original["detr.backbone.0.body.layer3.5.bn3.running_var"].shape == (1024,)
    assert "detr.backbone.0.body.layer3.0.downsample.1.running_var" in original
    assert "detr.backbone.0.body.bn1.running_mean" in original
    assert "detr.transformer.decoder.norm.weight" in original
    assert "detr.bbox_embed.layers.2.weight" in original
    assert original["mask_head.lay1.weight"].shape == (264, 264, 3, 3)
    assert original["bbox_attention.q_linear.weight"].shape == (256, 256)
    assert not any("encoder.norm" in k for k in original)
    assert len(original) == 490  # = DETRsegm R-50 state dict size


def test_panoptic_round_trip(panoptic, empty_panoptic_model, tmp_path):
    model, original = panoptic
    src = _save_original(tmp_path, original)
    out_path = str(tmp_path / "converted.pth")
    ckpt, info = convert_detr_checkpoint(src, out_path)
    assert info.kind == "panoptic" and info.metadata == "coco_panoptic"
    assert (info.num_classes, info.source_num_classes, info.resnet_depth, info.nheads) == (
        133,
        250,
        50,
        8,
    )

    # exact same tensors as the plugin model the checkpoint was derived from
    ref = model.state_dict()
    assert set(ckpt["model"]) == set(ref)
    for k, v in ckpt["model"].items():
        assert torch.equal(v, ref[k]), k

    # the file: Detectron2 format, loads through DetectionCheckpointer with nothing missing or
    # unexpected
    saved = torch.load(out_path, map_location="cpu", weights_only=True)
    assert saved["matching_heuristics"] is False and "__author__" in saved
    target = empty_panoptic_model
    checkpointer = DetectionCheckpointer(target)
    result = {}
    load_model = checkpointer._load_model

    def _capture(c):
        result["incompatible"] = load_model(c)
        return result["incompatible"]

    checkpointer._load_model = _capture
    checkpointer.load(out_path)
    inc = result["incompatible"]
    assert not inc.missing_keys and not inc.unexpected_keys and not inc.incorrect_shapes
    target.load_state_dict(saved["model"], strict=True)

    for a, b in zip(_raw_outputs(model), _raw_outputs(target)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_class_rows_follow_metadata(panoptic):
    _, original = panoptic
    new, _ = convert_detr_state_dict(original)
    w_src, w_new = original["detr.class_embed.weight"], new["detr.class_embed.weight"]
    b_src, b_new = original["detr.class_embed.bias"], new["detr.class_embed.bias"]
    meta = MetadataCatalog.get("coco_2017_val_panoptic")
    assert meta.thing_dataset_id_to_contiguous_id[1] == 0  # person
    assert torch.equal(w_new[0], w_src[1]) and torch.equal(b_new[0], b_src[1])
    c184 = meta.stuff_dataset_id_to_contiguous_id[184]  # a stuff category ("tree-merged")
    assert torch.equal(w_new[c184], w_src[184]) and torch.equal(b_new[c184], b_src[184])
    assert torch.equal(w_new[-1], w_src[-1]) and torch.equal(
        b_new[-1], b_src[-1]
    )  # no-object stays last
    assert w_new.shape == (134, 256)

    # row by row, for every category of both mappings
    tagged = torch.arange(251, dtype=torch.float32)[:, None]
    remapped = remap_class_rows(tagged, contiguous_id_map("coco_panoptic"))[:, 0]
    for d, c in contiguous_id_map("coco_panoptic").items():
        assert remapped[c] == d
    assert remapped[-1] == 250
    det = remap_class_rows(torch.arange(92.0), contiguous_id_map("coco_detection"))
    assert det.shape == (81,) and det[0] == 1 and det[79] == 90 and det[80] == 91


def test_unknown_key_is_an_error(panoptic):
    _, original = panoptic
    for extra in (
        "detr.transformer.encoder.layers.0.bogus.weight",
        "detr.foo",
        "mask_head.lay9.weight",
        "detr.backbone.0.body.layer5.0.conv1.weight",
    ):
        sd = dict(original)
        sd[extra] = torch.zeros(1)
        with pytest.raises(KeyError, match=re.escape(extra)):
            convert_detr_state_dict(sd)


def test_missing_key_is_an_error(panoptic):
    _, original = panoptic
    for gone, plugin_name in (
        ("detr.transformer.decoder.layers.5.norm3.bias", "transformer.decoder_layers.5.norm3.bias"),
        ("detr.backbone.0.body.layer3.2.bn2.running_var", "res4.2.conv2.norm.running_var"),
        ("mask_head.adapter2.weight", "mask_head.mask_head.adapter2.weight"),
        ("detr.query_embed.weight", "query_embed.weight"),
    ):
        sd = dict(original)
        del sd[gone]
        with pytest.raises(KeyError, match=re.escape(plugin_name)):
            convert_detr_state_dict(sd)


def test_unreadable_source_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt.pth"):
        convert_detr_checkpoint(str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert_detr_checkpoint(str(tmp_path / "nope.pth"))


def test_args_inconsistent_with_weights(panoptic, tmp_path):
    _, original = panoptic
    with pytest.raises(ValueError, match="dec_layers"):
        convert_detr_state_dict(original, args=_args(dec_layers=3))


def test_detection_checkpoint_loads_into_stage1_model(tmp_path):
    torch.manual_seed(4)
    model = _randomized(build_model(_cfg(False)).eval(), 6)
    original = _to_original(model.state_dict(), False, torch.Generator().manual_seed(7))
    assert original["class_embed.weight"].shape[0] == 92 and not any(
        k.startswith("detr.") for k in original
    )
    src = _save_original(tmp_path, original, dilation=None, masks=False)
    ckpt, info = convert_detr_checkpoint(src)
    assert info.kind == "detection" and info.metadata == "coco_detection" and info.num_classes == 80
    target = build_model(_cfg(False)).eval()
    target.load_state_dict(ckpt["model"], strict=True)
    ref = model.state_dict()
    for k, v in target.state_dict().items():
        assert torch.equal(v, ref[k]), k
    for a, b in zip(_raw_outputs(model)[:2], _raw_outputs(target)[:2]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    ov = config_overrides(info)
    assert ov[ov.index("MODEL.DETR.NUM_CLASSES") + 1] == "80"
    assert ov[ov.index("MODEL.MASK_HEAD.NAME") + 1] == '""'


def test_pre_norm_keys(panoptic):
    """Pre-norm checkpoints have transformer.encoder.norm.*: mapped, and reported as PRE_NORM."""
    _, original = panoptic
    sd = dict(original)
    sd["detr.transformer.encoder.norm.weight"] = torch.ones(256)
    sd["detr.transformer.encoder.norm.bias"] = torch.zeros(256)
    new, info = convert_detr_state_dict(sd)
    assert info.pre_norm and "detr.transformer.encoder_norm.weight" in new
    ov = config_overrides(info)
    assert ov[ov.index("MODEL.DETR.PRE_NORM") + 1] == "True"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli(panoptic, tmp_path, capsys):
    _, original = panoptic
    src = _save_original(tmp_path, original, dilation=True)
    out = str(tmp_path / "out.pth")
    tool = _tool("convert_detr_checkpoint")
    assert tool.main(["--source-model", src, "--output-model", out]) == 0
    printed = capsys.readouterr().out
    assert "MODEL.RESNETS.RES5_DILATION 2" in printed and "MODEL.DETR.NUM_CLASSES 133" in printed
    assert os.path.isfile(out)

    sd = dict(original)
    sd["detr.unexpected.weight"] = torch.zeros(1)
    bad = _save_original(tmp_path, sd, name="bad.pth")
    assert tool.main(["--source-model", bad, "--output-model", str(tmp_path / "x.pth")]) == 1
    assert "detr.unexpected.weight" in capsys.readouterr().err
