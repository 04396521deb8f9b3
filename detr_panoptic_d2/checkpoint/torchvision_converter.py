"""torchvision ResNet weights → Detectron2 ResNet names (the one implementation of the renaming).

torchvision: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}`` / ``bn{j}`` / ``downsample.0`` (conv) /
``downsample.1`` (BN), ``fc``. Detectron2 (``build_resnet_backbone``): ``stem.conv1`` +
``stem.conv1.norm``, ``res{2..5}.{i}.conv{j}`` + ``conv{j}.norm``, ``shortcut`` + ``shortcut.norm``.
A BatchNorm keeps weight, bias, running_mean and running_var (what Detectron2's FrozenBatchNorm2d
holds); ``num_batches_tracked`` is dropped. Completeness is checked by loading the result strictly
into the Detectron2 ResNet of the same depth.

The ResNet must be torchvision-style (stride in the 3×3 conv):
``MODEL.RESNETS.STRIDE_IN_1X1 False``, and ``MODEL.RESNETS.RES2_OUT_CHANNELS 64`` for R-18/34.
"""

import re

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

_BN = r"(weight|bias|running_mean|running_var)"
_RULES = [  # (torchvision key, Detectron2 name, or None for keys dropped on purpose)
    (r"^fc\.(weight|bias)$|^(bn1|layer\d\.\d+\.(bn\d|downsample\.1))\.num_batches_tracked$", None),
    (r"^conv1\.weight$", "stem.conv1.weight"),
    (rf"^bn1\.{_BN}$", r"stem.conv1.norm.\1"),
    (r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$", r"res\1.\2.conv\3.weight"),
    (rf"^layer([1-4])\.(\d+)\.bn(\d)\.{_BN}$", r"res\1.\2.conv\3.norm.\4"),
    (r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$", r"res\1.\2.shortcut.weight"),
    (rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN}$", r"res\1.\2.shortcut.norm.\3"),
]  # fmt: skip
# (blocks per stage, bottleneck blocks) → depth
DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
          ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}  # fmt: skip


def rename_torchvision_resnet_key(key):
    """One torchvision ResNet key → its Detectron2 name (without the ``backbone.`` prefix).

    Returns None for keys dropped on purpose (``fc.*``, ``*.num_batches_tracked``). Raises KeyError
    for anything else that is not a ResNet key.
    """
    for pattern, repl in _RULES:
        m = re.match(pattern, key)
        if m:
            if repl is None:
                return None
            # torchvision's layer1..4 are Detectron2's res2..5
            return re.sub(r"^res(\d)", lambda s: f"res{int(s.group(1)) + 1}", m.expand(repl))
    raise KeyError(f"not a torchvision ResNet key: {key!r}")


def convert_resnet_state_dict(
    state_dict, src_prefix="", dst_prefix="backbone.", source_name="state dict"
):
    """Rename the torchvision ResNet keys under ``src_prefix`` to Detectron2 names under
    ``dst_prefix``.

    Each key under ``src_prefix`` must be a ResNet key (KeyError naming it otherwise). Returns (new
    state dict, {new key: source key} of the renamed tensors, set of consumed source keys).
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
            out[dst_prefix + new], source_of[dst_prefix + new] = v, k
    return out, source_of, used


def resnet_depth(state_dict, prefix="backbone."):
    """Depth of the Detectron2-named ResNet in ``state_dict`` (block counts per stage, bottleneck or
    not)."""
    n = len(prefix.split("."))  # index of the block number in a key
    blocks = tuple(
        len({k.split(".")[n] for k in state_dict if k.startswith(f"{prefix}res{s}.")})
        for s in (2, 3, 4, 5)
    )
    depth = DEPTHS.get((blocks, f"{prefix}res2.0.conv3.weight" in state_dict))
    if depth is None:
        raise ValueError(f"ResNet with blocks per stage {blocks} is not a standard depth")
    return depth


def check_loads_strictly(module, state_dict, source_of, source_name):
    """Load ``state_dict`` into ``module`` strictly; a KeyError names the keys missing from it and
    the unexpected ones (with their source names), checked against ``module.state_dict()`` itself
    (``load_state_dict``'s report would miss BatchNorm statistics: Detectron2's FrozenBatchNorm2d
    fills them in for old checkpoints)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if missing or unexpected:
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        unexpected = [f"{k} (from {source_of.get(k, k)})" for k in unexpected]
        raise KeyError(
            f"{source_name}: missing keys (plugin names): {missing[:20]}{more}; "
            f"unexpected keys: {unexpected[:20]}"
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


def convert_torchvision_resnet(state_dict, source_name="torchvision ResNet"):
    """torchvision ImageNet ResNet state dict (``conv1``, ``bn1``, ``layer*``, ``fc``) → Detectron2
    backbone state dict with the plugin model's keys ``detr.backbone.stem.*``,
    ``detr.backbone.res{2..5}.*`` (``fc`` dropped; ``MODEL.WEIGHTS`` of a stage-1 config), checked
    against the Detectron2 ResNet of the same depth. Accepts a ``{"model": ...}`` /
    ``{"state_dict": ...}`` wrapper and a ``module.`` prefix."""
    from ..modeling.backbone import build_detr_resnet_backbone

    wrapped = [
        state_dict[w]
        for w in ("model", "state_dict")
        if isinstance(state_dict, dict) and w in state_dict
    ]
    state_dict = wrapped[0] if wrapped else state_dict
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{source_name}: not a state dict of tensors")
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    out, source_of, _ = convert_resnet_state_dict(state_dict, "", "", source_name)
    backbone = build_detr_resnet_backbone(resnet_cfg(resnet_depth(out, "")), ShapeSpec(channels=3))
    check_loads_strictly(backbone, out, source_of, source_name)
    return {"detr.backbone." + k: v for k, v in out.items()}
