"""torchvision ResNet weights → Detectron2 ResNet names (the one implementation of the renaming).

torchvision: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}`` / ``bn{j}`` / ``downsample.0`` (conv) /
``downsample.1`` (BN), ``fc``. Detectron2 (``build_resnet_backbone``): ``stem.conv1`` + ``stem.conv1.norm``,
``res{2..5}.{i}.conv{j}`` + ``conv{j}.norm``, ``shortcut`` + ``shortcut.norm``. A BatchNorm keeps weight, bias,
running_mean and running_var (what Detectron2's FrozenBatchNorm2d holds); ``num_batches_tracked`` is dropped.

The ResNet must be torchvision-style (stride in the 3×3 conv): ``MODEL.RESNETS.STRIDE_IN_1X1 False``, and
``MODEL.RESNETS.RES2_OUT_CHANNELS 64`` for R-18/34.
"""
import re

import torch

__all__ = [
    "rename_torchvision_resnet_key",
    "convert_resnet_state_dict",
    "convert_torchvision_resnet",
    "load_state_dict_file",
    "save_d2_checkpoint",
]

_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")
_STEM = re.compile(r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked))$")
_BLOCK = re.compile(
    r"^layer([1-4])\.(\d+)\.(conv([1-3])\.weight|bn([1-3])\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|downsample\.0\.weight|downsample\.1\.(weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def rename_torchvision_resnet_key(key):
    """One torchvision ResNet key → its Detectron2 name (without the ``backbone.`` prefix).

    Returns None for keys that have no Detectron2 counterpart and are dropped on purpose (``fc.*``,
    ``*.num_batches_tracked``). Raises KeyError for anything else that is not a ResNet key.
    """
    if key.endswith(".num_batches_tracked") and (_STEM.match(key) or _BLOCK.match(key)):
        return None
    if key in ("fc.weight", "fc.bias"):
        return None
    if _STEM.match(key):
        return "stem.conv1.weight" if key == "conv1.weight" else "stem.conv1.norm." + key.split(".", 1)[1]
    m = _BLOCK.match(key)
    if not m:
        raise KeyError(f"not a torchvision ResNet key: {key!r}")
    stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
    prefix = f"res{stage + 1}.{block}."
    if rest.startswith("conv"):
        return prefix + rest
    if rest.startswith("bn"):
        j, leaf = rest[2], rest.split(".", 1)[1]
        return prefix + f"conv{j}.norm.{leaf}"
    if rest == "downsample.0.weight":
        return prefix + "shortcut.weight"
    return prefix + "shortcut.norm." + rest.split(".", 2)[2]


def _check_resnet_complete(new_keys, source_name):
    """Every block of every stage has all its convs and norms, block indices are contiguous from 0."""
    missing = []
    for leaf in ("weight",) + tuple("norm." + b for b in _BN_LEAVES):
        k = "stem.conv1." + leaf if leaf != "weight" else "stem.conv1.weight"
        if k not in new_keys:
            missing.append(k)
    blocks = {}
    for k in new_keys:
        m = re.match(r"^res([2-5])\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    for stage in (2, 3, 4, 5):
        if stage not in blocks:
            missing.append(f"res{stage}.* (torchvision layer{stage - 1}.*)")
            continue
        n = max(blocks[stage]) + 1
        # bottleneck blocks have conv3; basic blocks (R-18/34) do not
        convs = 3 if any(k.startswith(f"res{stage}.0.conv3.") for k in new_keys) else 2
        for i in range(n):
            for j in range(1, convs + 1):
                for leaf in ("weight",) + tuple("norm." + b for b in _BN_LEAVES):
                    k = f"res{stage}.{i}.conv{j}.{leaf}"
                    if k not in new_keys:
                        missing.append(k)
            has_shortcut = any(k.startswith(f"res{stage}.{i}.shortcut.") for k in new_keys)
            if has_shortcut or (i == 0 and (stage > 2 or convs == 3)):
                for leaf in ("weight",) + tuple("norm." + b for b in _BN_LEAVES):
                    k = f"res{stage}.{i}.shortcut.{leaf}"
                    if k not in new_keys:
                        missing.append(k)
    if missing:
        raise KeyError(f"{source_name}: incomplete ResNet weights, missing (Detectron2 names): {missing[:20]}"
                       + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))


def convert_resnet_state_dict(state_dict, src_prefix="", dst_prefix="backbone.", source_name="state dict"):
    """Rename the torchvision ResNet keys under ``src_prefix`` to Detectron2 names under ``dst_prefix``.

    Only keys starting with ``src_prefix`` are considered; each of them must be a ResNet key (KeyError naming
    it otherwise). Returns (new state dict, set of consumed source keys).
    """
    out, used = {}, set()
    for k, v in state_dict.items():
        if not k.startswith(src_prefix):
            continue
        try:
            new = rename_torchvision_resnet_key(k[len(src_prefix):])
        except KeyError:
            raise KeyError(f"{source_name}: unexpected key {k!r} (not a torchvision ResNet key)") from None
        used.add(k)
        if new is not None:
            out[dst_prefix + new] = v
    _check_resnet_complete({k[len(dst_prefix):] for k in out}, source_name)
    return out, used


def load_state_dict_file(path_or_url):
    """torch.load a local file or URL (downloaded through Detectron2's PathManager) on the CPU.

    Loads with ``weights_only=True`` (plus ``argparse.Namespace``, which DETR checkpoints hold in "args").
    Raises FileNotFoundError / RuntimeError naming the file when it cannot be fetched or read.
    """
    import argparse
    import os

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
    import os

    if not str(output_path).endswith(".pth"):
        raise ValueError(f"output must be a .pth file (DetectionCheckpointer reads .pkl as Caffe2/Detectron): "
                         f"{output_path}")
    d = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(d, exist_ok=True)
    ckpt = {
        "model": {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
        "__author__": author,
        "matching_heuristics": False,
    }
    torch.save(ckpt, output_path)
    return ckpt


def convert_torchvision_resnet(state_dict, source_name="torchvision ResNet"):
    """torchvision ImageNet ResNet state dict (``conv1``, ``bn1``, ``layer*``, ``fc``) → Detectron2 backbone
    state dict with keys ``backbone.stem.*``, ``backbone.res{2..5}.*`` (``fc`` dropped).

    Accepts a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper and a ``module.`` prefix.
    """
    if isinstance(state_dict, dict):
        for wrapper in ("model", "state_dict"):
            if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
                state_dict = state_dict[wrapper]
                break
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{source_name}: not a state dict of tensors")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    out, used = convert_resnet_state_dict(state_dict, "", "backbone.", source_name)
    assert used == set(state_dict)
    return out
