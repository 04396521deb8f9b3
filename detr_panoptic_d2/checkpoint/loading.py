"""Loading checkpoints into this plugin's model: the checkpointer (which also reads raw official
DETR checkpoints and fine-tunes onto other classes), the key-rename rule for the earlier layout, and
the strict loads of one part of the model (stage 2's frozen DETR body, a mask head to start
from), and the record of what a partial load left uninitialized: allowed in training (the log lists
it), an error at inference."""

import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .detr_converter import convert_detr_state_dict
from .io import load_state_dict_file, save_d2_checkpoint

logger = logging.getLogger(__name__)

# Top-level modules of the DETR body, which checkpoints written before it had its own module
# (``detr.``) hold at the top level of the model.
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
# State of the training-only queries (modeling/training_queries.py): never read at inference.
TRAINING_ONLY_PREFIXES = ("detr.training_queries.",)


class UninitializedParametersError(RuntimeError):
    """Inference with parameters that no checkpoint gave a value (a partial load, untrained)."""


def group_keys(keys, all_keys):
    """``keys`` (a subset of the state-dict keys ``all_keys``) grouped by module: each group is the
    largest module (of more than one key) all of whose keys are in ``keys`` ("mask_head.*"), or a
    single key where only part of its module is. Returns [(name, count)] in the order of
    ``all_keys``."""
    keys = set(keys)
    total, hit = {}, {}
    for k in all_keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            total[prefix] = total.get(prefix, 0) + 1
            hit[prefix] = hit.get(prefix, 0) + (k in keys)
    groups = {}
    for k in all_keys:
        if k not in keys:
            continue
        parts = k.split(".")
        name = next(
            (
                p + ".*"
                for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                if hit[p] == total[p] > 1
            ),
            k,
        )
        groups[name] = groups.get(name, 0) + 1
    return list(groups.items())


def describe_groups(groups):
    """ "mask_head.* (74 tensors), detr.query_embed.weight" for :func:`group_keys`' groups."""
    return ", ".join(
        name if not name.endswith(".*") else f"{name} ({n} tensor{'s' if n != 1 else ''})"
        for name, n in groups
    )


def _hint(keys, source):
    """What to do about the uninitialized ``keys`` left by ``source``."""
    if all(k.startswith("mask_head.") for k in keys):
        if "FROZEN_WEIGHTS" in source:
            return (
                "MODEL.DETR.FROZEN_WEIGHTS gives the DETR body only; set MODEL.WEIGHTS to a "
                "stage-2 checkpoint, or train the mask head first"
            )
        return (
            "this is a stage-1 checkpoint (no mask head); use a stage-2 checkpoint, or a stage-1 "
            "config (no MODEL.MASK_HEAD.NAME)"
        )
    if all(k in CLASS_HEAD_KEYS for k in keys):
        return (
            "the checkpoint's class head is for another MODEL.DETR.NUM_CLASSES (or absent); set "
            "MODEL.DETR.NUM_CLASSES to the checkpoint's, or fine-tune before inference"
        )
    return (
        "the checkpoint is not of this config's model; use a checkpoint of this model (partial "
        "loads are for training, where what is missing is trained)"
    )


def uninitialized_message(uninitialized, all_keys):
    """The error of :class:`UninitializedParametersError`: ``uninitialized`` maps state-dict keys
    to the source (file, config key) of the load that left them without a value; the keys are
    grouped by module (:func:`group_keys`), per source, each with a hint."""
    by_source = {}
    for k, source in uninitialized.items():
        by_source.setdefault(source, []).append(k)
    parts = [
        f"{describe_groups(group_keys(keys, all_keys))} missing from {source}: "
        + _hint(keys, source)
        for source, keys in by_source.items()
    ]
    return "cannot run inference with parameters left uninitialized: " + "; ".join(parts)


def rename_legacy_keys(state_dict, prefix=""):
    """In place: ``<prefix>backbone.*``, ``<prefix>transformer.*``, ... (the earlier layout, with
    the DETR body's modules at the top of the model) → ``<prefix>detr.backbone.*``, .... Returns the
    renamed keys' count."""
    old = [
        k
        for k in state_dict
        if k.startswith(prefix) and k[len(prefix) :].startswith(_LEGACY_BODY_MODULES)
    ]
    for k in old:
        state_dict[prefix + "detr." + k[len(prefix) :]] = state_dict.pop(k)
    return len(old)


def is_original_detr_layout(state_dict):
    """Whether a state dict has the original DETR implementation's key layout (a raw official
    checkpoint)."""
    return any(k.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for k in state_dict)


def to_plugin_state(ckpt, source_name):
    """The model state dict of a loaded checkpoint in this plugin's names: a Detectron2 checkpoint
    ({"model": ...}), a bare state dict, or a raw original DETR checkpoint (converted on the fly,
    class rows remapped to COCO's contiguous ids); ``module.`` prefixes dropped, legacy keys
    renamed."""
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{source_name} holds no state dict of tensors")
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")
    if is_original_detr_layout(state):
        state, info = convert_detr_state_dict(state, args=ckpt.get("args"), source_name=source_name)
        logger.info(f"{source_name}: an original DETR {info.kind} checkpoint, converted on the fly")
    rename_legacy_keys(state)
    return state


def convert_to_plugin_file(path, converted_path, source_name=None, force=False):
    """The checkpoint file ``path`` as Detectron2's plain checkpointer can read it: ``path``
    itself when it is in this plugin's layout, else ``converted_path``, written once (atomically:
    processes of one machine may ask together) from the original DETR checkpoint at ``path``."""
    if os.path.isfile(converted_path) and not force:
        return converted_path
    ckpt = load_state_dict_file(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not is_original_detr_layout(state):
        return path
    state = to_plugin_state(ckpt, source_name or path)
    tmp = f"{converted_path}.tmp{os.getpid()}.pth"
    save_d2_checkpoint(state, tmp, "detr_panoptic_d2 (converted from an original DETR checkpoint)")
    os.replace(tmp, converted_path)
    logger.info(f"{source_name or path}: converted to this plugin's layout in {converted_path}")
    return converted_path


def read_checkpoint_state(path, key):
    """The model state dict of the checkpoint file ``path`` in this plugin's names (see
    :func:`to_plugin_state`). ``key`` names the config key that gave the path, for errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: no such file: {path}")
    try:
        ckpt = load_state_dict_file(path)
    except Exception as e:
        raise RuntimeError(f"{key}: cannot read checkpoint {path}: {e}") from e
    return to_plugin_state(ckpt, f"{key}: {path}")


def load_submodule(module, path, prefix, key):
    """Load the ``<prefix>*`` tensors of the checkpoint at ``path`` into ``module`` strictly (every
    key, every shape); errors name ``key``, the file and the offending keys."""
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


def to_model_layout(state_dict, prefix, model):
    """In place, for whatever loads ``model`` (``DetrPanoptic``) from ``state_dict`` under
    ``prefix``: Detectron2's plain ``DetectionCheckpointer`` (``DefaultPredictor``, a LazyConfig
    training loop), ``model.load_state_dict``. An original DETR checkpoint's keys are converted
    (:func:`convert_detr_state_dict`), the earlier layout's renamed, and a class head of another
    class count (fine-tuning) or training-only queries of another shape are left out (they keep
    their initialization; the log says so), as :class:`DetrCheckpointer` does. Returns the keys
    left out."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    sub = {k[len(prefix) :]: state_dict[k] for k in keys}
    changed = False
    if is_original_detr_layout(sub):
        if not any(k.endswith("class_embed.weight") for k in sub):
            raise RuntimeError(
                "an original DETR checkpoint without its class head: Detectron2's "
                "DetectionCheckpointer drops tensors whose shape differs from the model's (the "
                "official head has a row per COCO id) before the model can map them. Load it "
                "by its official URL (converted on download), with DetrCheckpointer "
                "(tools/train_net.py, tools/demo.py, detr_panoptic_d2.model_zoo.get), or "
                "convert it first: tools/convert_detr_checkpoint.py"
            )
        sub, info = convert_detr_state_dict(sub, source_name="state dict")
        logger.info(f"An original DETR {info.kind} state dict, converted on load")
        changed = True
    changed |= rename_legacy_keys(sub) > 0
    own = model.state_dict()
    dropped = [
        k
        for k, v in sub.items()
        if k in own
        and (k in CLASS_HEAD_KEYS or k.startswith(TRAINING_ONLY_PREFIXES))
        and hasattr(v, "shape")
        and tuple(v.shape) != tuple(own[k].shape)
    ]
    if dropped:
        logger.info(
            "Left at their initialization (the checkpoint's have other shapes: another class "
            "count or query groups): "
            + ", ".join(
                f"{k} (checkpoint {tuple(sub[k].shape)}, model {tuple(own[k].shape)})"
                for k in dropped
            )
        )
        for k in dropped:
            del sub[k]
        changed = True
    if changed:
        for k in keys:
            del state_dict[k]
        state_dict.update({prefix + k: v for k, v in sub.items()})
    return dropped


class DetrCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reads the earlier key layout, and fine-tunes onto other
    classes.

    A class head whose shape differs from the model's (another ``MODEL.DETR.NUM_CLASSES``) is
    skipped, so it keeps its fresh initialization, and the log says so. Any other shape mismatch is
    an error naming the keys: Detectron2 alone would skip those too, with a warning that is easy to
    miss. What the checkpoint leaves uninitialized (missing or skipped) is logged grouped by module
    ("Initialized from scratch"); the model itself (``DetrPanoptic``) refuses to run inference with
    it until it has been trained.
    """

    def _load_file(self, filename):
        self._loading = filename
        if not filename.endswith(".pth"):  # .pkl: Detectron2/Caffe2 model zoo files
            return super()._load_file(filename)
        ckpt = load_state_dict_file(
            filename
        )  # also holds argparse.Namespace (official DETR "args")
        if isinstance(ckpt, dict) and is_original_detr_layout(ckpt.get("model", ckpt)):
            return {"model": to_plugin_state(ckpt, filename), "matching_heuristics": False}
        return ckpt if isinstance(ckpt, dict) and "model" in ckpt else {"model": ckpt}

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        rename_legacy_keys(state)
        own = self.model.state_dict()
        mismatched = {
            k: (tuple(v.shape), tuple(own[k].shape))
            for k, v in state.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        }
        for k in [k for k in mismatched if k.startswith("detr.training_queries.")]:
            # training-only queries of another MODEL.DETR.GROUPS / class count: they keep their
            # initialization (modeling/training_queries.py)
            del state[k], mismatched[k]
        others = {k: s for k, s in mismatched.items() if k not in CLASS_HEAD_KEYS}
        if others:
            raise ValueError(
                f"checkpoint {getattr(self, '_loading', '?')} does not fit the model: shape "
                f"mismatch (checkpoint, model) of {others}. Only the class head may differ "
                "(fine-tuning onto other classes)."
            )
        source = getattr(self, "_loading", "the checkpoint")
        # the model's load hook names the file in its record of what stays uninitialized
        self.model._checkpoint_source = source
        try:
            incompatible = super()._load_model(checkpoint)
        finally:
            del self.model._checkpoint_source
        if incompatible.missing_keys:
            groups = group_keys(incompatible.missing_keys, list(own))
            logger.info(f"Initialized from scratch (not in {source}): {describe_groups(groups)}")
        if mismatched:
            num_classes = own["detr.class_embed.bias"].shape[0] - 1
            logger.info(
                f"Re-initialized for MODEL.DETR.NUM_CLASSES={num_classes} (the checkpoint's class "
                "head has other classes): "
                + ", ".join(f"{k} (checkpoint {a}, model {b})" for k, (a, b) in mismatched.items())
            )
        return incompatible
