"""Reading and writing checkpoint files: any PyTorch checkpoint by path or URL, Detectron2's .pth
format."""

import argparse
import os

import torch

# Official DETR checkpoints hold their training arguments as an ``argparse.Namespace`` (plain
# data): allowed in every ``torch.load(weights_only=True)`` of the process, so that Detectron2's
# own checkpointer (``DefaultPredictor``, a LazyConfig training loop) reads them as ours does.
torch.serialization.add_safe_globals([argparse.Namespace])


def load_state_dict_file(path_or_url):
    """torch.load a local file or URL (downloaded through Detectron2's PathManager) on the CPU.

    Loads with ``weights_only=True`` (plus ``argparse.Namespace``, which DETR checkpoints hold in
    "args"). Raises FileNotFoundError / RuntimeError naming the file when it cannot be fetched or
    read.
    """
    from detectron2.utils.file_io import PathManager

    try:
        local = PathManager.get_local_path(path_or_url)
    except Exception as e:  # network, unknown scheme, ...
        raise RuntimeError(f"cannot fetch {path_or_url}: {e}") from e
    if not os.path.isfile(local):
        raise FileNotFoundError(f"no such checkpoint file: {path_or_url}")
    try:
        # argparse.Namespace is allowed process-wide above (a safe_globals context here would
        # take it off again on exit, for Detectron2's loaders too)
        return torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"cannot read checkpoint {path_or_url}: not a readable PyTorch checkpoint "
            "(corrupt, truncated, or holding objects other than tensors and "
            f"argparse.Namespace): {e}"
        ) from e


def save_d2_checkpoint(state_dict, output_path, author):
    """Save as a Detectron2 .pth checkpoint: {"model": ..., "__author__": ...,
    "matching_heuristics": False}.

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
