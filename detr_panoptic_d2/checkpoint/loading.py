"""Loading this plugin's checkpoints: the checkpointer, the key-rename rule for the earlier layout, and the
strict loads of one part of the model (stage 2's frozen DETR body)."""

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)

# Top-level modules of the DETR body, which checkpoints written before it had its own module (``detr.``) hold
# at the top level of the model.
_LEGACY_BODY_MODULES = (
    "backbone.",
    "input_proj.",
    "position_embedding.",
    "query_embed.",
    "transformer.",
    "class_embed.",
    "bbox_embed.",
)
CLASS_HEAD_KEYS = ("detr.class_embed.weight", "detr.class_embed.bias")


def rename_legacy_keys(state_dict, prefix=""):
    """In place: ``<prefix>backbone.*``, ``<prefix>transformer.*``, ... (the earlier layout, with the DETR body's
    modules at the top of the model) → ``<prefix>detr.backbone.*``, .... Returns the renamed keys' count."""
    old = [
        k
        for k in state_dict
        if k.startswith(prefix) and k[len(prefix) :].startswith(_LEGACY_BODY_MODULES)
    ]
    for k in old:
        state_dict[prefix + "detr." + k[len(prefix) :]] = state_dict.pop(k)
    return len(old)


def read_checkpoint_state(path, key):
    """The model state dict of the checkpoint file ``path`` (a Detectron2 checkpoint {"model": ...} or a bare
    state dict), with legacy keys renamed. ``key`` names the config key that gave the path, for errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: no such file: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"{key}: cannot read checkpoint {path}: {e}") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{key}: {path} holds no state dict of tensors")
    state = dict(state)
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
    rename_legacy_keys(state)
    return state


def load_submodule(module, path, prefix, key):
    """Load the ``<prefix>*`` tensors of the checkpoint at ``path`` into ``module`` strictly (every key, every
    shape); errors name ``key``, the file and the offending keys."""
    state = read_checkpoint_state(path, key)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(
            f"{key}: {path} has no '{prefix}*' tensors (keys start with {sorted(state)[:5]} ...)"
        )
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{key}: {path} does not match the model's '{prefix}*' part: {e}") from e
    logger.info(f"Loaded {len(sub)} tensors of '{prefix}*' from {path} ({key})")


def load_detr_body(detr, path, key="MODEL.DETR.FROZEN_WEIGHTS"):
    """Stage 2: the DETR body (``detr.*``) of a stage-1 checkpoint, loaded strictly."""
    load_submodule(detr, path, "detr.", key)


class DetrCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads the earlier key layout, and fine-tunes onto other classes.

    A class head whose shape differs from the model's (another ``MODEL.DETR.NUM_CLASSES``) is skipped, so it
    keeps its fresh initialization, and the log says so. Any other shape mismatch is an error naming the keys:
    Detectron2 alone would skip those too, with a warning that is easy to miss.
    """

    def _load_file(self, filename):
        self._loading = filename
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        rename_legacy_keys(state)
        own = self.model.state_dict()
        mismatched = {
            k: (tuple(v.shape), tuple(own[k].shape))
            for k, v in state.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        }
        others = {k: s for k, s in mismatched.items() if k not in CLASS_HEAD_KEYS}
        if others:
            raise ValueError(
                f"checkpoint {getattr(self, '_loading', '?')} does not fit the model: shape mismatch (checkpoint, "
                f"model) of {others}. Only the class head may differ (fine-tuning onto other classes)."
            )
        incompatible = super()._load_model(checkpoint)
        if mismatched:
            logger.info(
                f"Re-initialized for MODEL.DETR.NUM_CLASSES={own['detr.class_embed.bias'].shape[0] - 1} (the "
                f"checkpoint's class head has other classes): "
                + ", ".join(f"{k} (checkpoint {a}, model {b})" for k, (a, b) in mismatched.items())
            )
        return incompatible
