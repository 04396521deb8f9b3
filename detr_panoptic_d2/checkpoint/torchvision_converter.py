"""torchvision ResNet weights → Detectron2 ResNet names (the one implementation of the renaming).

torchvision: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}`` / ``bn{j}`` / ``downsample.0`` (conv) /
``downsample.1`` (BN), ``fc``. Detectron2 (``build_resnet_backbone``): ``stem.conv1`` + ``stem.conv1.norm``,
``res{2..5}.{i}.conv{j}`` + ``conv{j}.norm``, ``shortcut`` + ``shortcut.norm``. A BatchNorm keeps weight, bias,
running_mean and running_var (what Detectron2's FrozenBatchNorm2d holds); ``num_batches_tracked`` is dropped.
Completeness is checked by loading the result strictly into the Detectron2 ResNet of the same depth.

The ResNet must be torchvision-style (stride in the 3×3 conv): ``MODEL.RESNETS.STRIDE_IN_1X1 False``, and
``MODEL.RESNETS.RES2_OUT_CHANNELS 64`` for R-18/34.
"""

import argparse
import os
import re

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

_BN = r"bn(\d)\.(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES = [  # (torchvision key, Detectron2 name or None for dropped keys)
    (
        r"^fc\.(weight|bias)$|^(bn1|layer[1-4]\.\d+\.(bn\d|downsample\.1))\.num_batches_tracked$",
        None,
    ),
    (r"^conv1\.weight$", "stem.conv1.weight"),
    (r"^bn1\.(\w+)$", r"stem.conv1.norm.\1"),
    (r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$", r"res\1.\2.conv\3.weight"),
    (rf"^layer([1-4])\.(\d+)\.{_BN}$", r"res\1.\2.conv\3.norm.\4"),
    (r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$", r"res\1.\2.shortcut.weight"),
    (
        r"^layer([1-4])\.(\d+)\.downsample\.1\.(weight|bias|running_mean|running_var)$",
        r"res\1.\2.shortcut.norm.\3",
    ),
]
_RULES = [(re.compile(p), r) for p, r in _RULES]
DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}


def rename_torchvision_resnet_key(key):
    """One torchvision ResNet key → its Detectron2 name (without the ``backbone.`` prefix).

    Returns None for keys dropped on purpose (``fc.*``, ``*.num_batches_tracked``). Raises KeyError for
    anything else that is not a ResNet key.
    """
    for rx, repl in _RULES:
        m = rx.match(key)
        if m:
            if repl is None:
                return None
            # torchvision's layer1..4 are Detectron2's res2..5
            return re.sub(r"^res(\d)", lambda s: f"res{int(s.group(1)) + 1}", m.expand(repl))
    raise KeyError(f"not a torchvision ResNet key: {key!r}")


def convert_resnet_state_dict(
    state_dict, src_prefix="", dst_prefix="backbone.", source_name="state dict"
):
    """Rename the torchvision ResNet keys under ``src_prefix`` to Detectron2 names under ``dst_prefix``.

    Each key under ``src_prefix`` must be a ResNet key (KeyError naming it otherwise). Returns (new state dict,
    {new key: source key} of the renamed tensors, set of consumed source keys).
    """
    out, source_of, used = {}, {}, set()
    for k, v in state_dict.items():
        if not k.startswith(src_prefix):
            continue
        try:
            new = rename_torchvision_resnet_key(k[len(src_prefix) :])
        except KeyError:
            raise KeyError(
                f"{source_name}: unexpected key {k!r} (not a torchvision ResNet key)"
            ) from None
        used.add(k)
        if new is not None:
            out[dst_prefix + new] = v
            source_of[dst_prefix + new] = k
    return out, source_of, used


def resnet_depth(state_dict, prefix="backbone."):
    """Depth of the Detectron2-named ResNet in ``state_dict`` (block counts per stage, bottleneck or not)."""
    blocks = tuple(
        len(
            {
                k.split(".")[len(prefix.split("."))]
                for k in state_dict
                if k.startswith(f"{prefix}res{s}.")
            }
        )
        for s in (2, 3, 4, 5)
    )
    depth = DEPTHS.get((blocks, f"{prefix}res2.0.conv3.weight" in state_dict))
    if depth is None:
        raise ValueError(f"ResNet with blocks per stage {blocks} is not a standard depth")
    return depth


def check_loads_strictly(module, state_dict, source_of, source_name):
    """``module.load_state_dict(state_dict, strict=True)``, with a KeyError naming the missing keys and the
    unexpected ones (with their source names) when it does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        unexpected = [f"{k} (from {source_of.get(k, k)})" for k in unexpected]
        raise KeyError(
            f"{source_name}: missing keys (plugin names): {missing[:20]}"
            + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            + f"; unexpected keys: {unexpected[:20]}"
        )
    module.load_state_dict(state_dict, strict=True)


def resnet_cfg(depth):
    """A Detectron2 config of the torchvision-style ResNet of ``depth``, res2..res5 out."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STRIDE_IN_1X1, r.OUT_FEATURES = depth, False, ["res2", "res3", "res4", "res5"]
    if depth in (18, 34):
        r.RES2_OUT_CHANNELS = 64
    return cfg


def load_state_dict_file(path_or_url):
    """torch.load a local file or URL (downloaded through Detectron2's PathManager) on the CPU.

    Loads with ``weights_only=True`` (plus ``argparse.Namespace``, which DETR checkpoints hold in "args").
    Raises FileNotFoundError / RuntimeError naming the file when it cannot be fetched or read.
    """
    from detectron2.utils.file_io import PathManager

    try:
        local = PathManager.get_local_path(path_or_url)
    except Exception as e:  # network, unknown scheme, ...
        raise RuntimeError(f"cannot fetch {path_or_url}: {e}") from e
    if not os.path.isfile(local):
        raise FileNotFoundError(f"no such checkpoint file: {path_or_url}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"cannot read checkpoint {path_or_url}: not a readable PyTorch checkpoint "
            f"(corrupt, truncated, or holding objects other than tensors and argparse.Namespace): {e}"
        ) from e


def save_d2_checkpoint(state_dict, output_path, author):
    """Save as a Detectron2 .pth checkpoint: {"model": ..., "__author__": ..., "matching_heuristics": False}.

    ``DetectionCheckpointer`` loads these names as they are (no name-matching heuristics).
    """
    if not str(output_path).endswith(".pth"):
        raise ValueError(
            f"output must be a .pth file (DetectionCheckpointer reads .pkl as Caffe2/Detectron): "
            f"{output_path}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    ckpt = {
        "model": {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
        "__author__": author,
        "matching_heuristics": False,
    }
    torch.save(ckpt, output_path)
    return ckpt


def convert_torchvision_resnet(state_dict, source_name="torchvision ResNet"):
    """torchvision ImageNet ResNet state dict (``conv1``, ``bn1``, ``layer*``, ``fc``) → Detectron2 backbone
    state dict with keys ``detr.backbone.stem.*``, ``detr.backbone.res{2..5}.*`` (``fc`` dropped), the plugin
    model's names (``MODEL.WEIGHTS`` of a stage-1 config), checked against the
    Detectron2 ResNet of the same depth. Accepts a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper and a
    ``module.`` prefix."""
    from ..modeling.backbone import build_detr_resnet_backbone

    if isinstance(state_dict, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(state_dict.get(wrapper), dict):
                state_dict = state_dict[wrapper]
                break
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{source_name}: not a state dict of tensors")
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    out, source_of, _ = convert_resnet_state_dict(state_dict, "", "", source_name)
    backbone = build_detr_resnet_backbone(resnet_cfg(resnet_depth(out, "")), ShapeSpec(channels=3))
    check_loads_strictly(backbone, out, source_of, source_name)
    return {"detr.backbone." + k: v for k, v in out.items()}
