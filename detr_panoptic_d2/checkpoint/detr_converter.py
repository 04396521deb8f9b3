"""Original DETR checkpoints (facebookresearch/detr) → this plugin's Detectron2 checkpoints.

Panoptic checkpoints (``DETRsegm``): keys ``detr.*`` (backbone, transformer, heads),
``bbox_attention.*`` and ``mask_head.*``; 250 classes + no-object, rows indexed by COCO panoptic
category id.
Detection checkpoints (``DETR``): the same without the ``detr.`` prefix and the mask parts; 91
classes + no-object, rows indexed by COCO category id.

Renaming (original → plugin; ``<part>`` is ``encoder`` or ``decoder``):

================================================  =================================================
``[detr.]backbone.0.body.<torchvision ResNet>``   ``detr.backbone.<Detectron2 ResNet>``
``[detr.]transformer.<part>.layers.{i}.*``        ``detr.transformer.<part>_layers.{i}.*``
``[detr.]transformer.<part>.norm.*``              ``detr.transformer.<part>_norm.*``
``[detr.]{input_proj,query_embed,bbox_embed}.*``  ``detr.`` + the same
``[detr.]class_embed.*``                          ``detr.class_embed.*``, rows remapped (see below)
``bbox_attention.*``                              ``mask_head.bbox_attention.*``
``mask_head.*``                                   ``mask_head.mask_head.*``
================================================  =================================================

Class rows: the row of contiguous id ``c`` is the source row of the dataset id ``d`` with
``map[d] == c`` (Detectron2's builtin metadata: ``coco_2017_val_panoptic`` things + stuff → 133,
``coco_2017_val`` things → 80); the no-object row (last) stays last. Every source key must be used
and the result must load strictly into the plugin's model built for it; otherwise a KeyError names
the keys.
"""

import re
from dataclasses import dataclass, field

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .io import load_state_dict_file, save_d2_checkpoint
from .torchvision_converter import check_loads_strictly, convert_resnet_state_dict, resnet_depth

# --metadata choice → Detectron2 builtin data set whose metadata gives the dataset id → contiguous
# id map
METADATA = {"coco_panoptic": "coco_2017_val_panoptic", "coco_detection": "coco_2017_val"}
_BODY_RULES = [  # (original name without "detr.", plugin name)
    (r"^transformer\.(encoder|decoder)\.layers\.(.+)$", r"detr.transformer.\1_layers.\2"),
    (r"^transformer\.(encoder|decoder)\.norm\.(.+)$", r"detr.transformer.\1_norm.\2"),
    (r"^(input_proj|query_embed|class_embed|bbox_embed)\.(.+)$", r"detr.\1.\2"),
]
_MASK_RULES = [
    (r"^bbox_attention\.(.+)$", r"mask_head.bbox_attention.\1"),
    (r"^mask_head\.(.+)$", r"mask_head.mask_head.\1"),
]


@dataclass
class DetrCheckpointInfo:
    """What the converter learned about the source checkpoint (hyper-parameters, class mapping)."""

    kind: str  # "panoptic" or "detection"
    metadata: str  # key of METADATA
    num_classes: int  # contiguous classes in the output (no-object excluded)
    source_num_classes: int  # class_embed rows - 1 in the source
    hidden_dim: int
    num_queries: int
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    pre_norm: bool
    resnet_depth: int
    nheads: int = None  # from args, or from the mask head's input width (panoptic)
    dilation: bool = None  # from args only (not visible in the weights)
    args: dict = field(default_factory=dict)


def contiguous_id_map(metadata):
    """{dataset category id: contiguous id} of ``metadata`` ("coco_panoptic" / "coco_detection" / a
    Detectron2 data set name)."""
    import detectron2.data.datasets  # noqa: F401  (registers the builtin data sets)
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(METADATA.get(metadata, metadata))
    mapping = dict(meta.thing_dataset_id_to_contiguous_id)
    mapping.update(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}))
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"metadata {metadata!r}: contiguous ids are not 0..{len(mapping) - 1}")
    return mapping


def remap_class_rows(tensor, id_map, source_name="checkpoint"):
    """(R, ...) class-head rows indexed by dataset id, last row no-object → (K + 1, ...) rows
    indexed by contiguous id, last row the same no-object row."""
    num_rows = tensor.shape[0]
    if max(id_map) >= num_rows - 1:
        raise ValueError(f"{source_name}: class_embed has {num_rows} rows (incl. no-object) "
                         f"but the metadata has category id {max(id_map)}; "
                         "wrong --metadata?")  # fmt: skip
    order = [d for d, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    index = torch.tensor(order + [num_rows - 1], dtype=torch.long, device=tensor.device)
    return tensor.index_select(0, index).clone()


def _rename(state_dict, panoptic, source_name):
    """Original names → plugin names. Returns (new state dict, {new key: source key})."""
    body = "detr." if panoptic else ""
    out, source_of, used = convert_resnet_state_dict(
        state_dict, body + "backbone.0.body.", "detr.backbone.", source_name
    )
    unknown = []
    for k, v in state_dict.items():
        if k in used:
            continue
        # the body's keys start with "detr." in panoptic checkpoints; the mask head's parts lie
        # outside it
        name, rules = (k[len(body) :], _BODY_RULES) if k.startswith(body) else (k, _MASK_RULES)
        new = next((re.sub(p, r, name) for p, r in rules if re.match(p, name)), None)
        if new is None:
            unknown.append(k)
        else:
            out[new], source_of[new] = v, k
    if unknown:
        raise KeyError(
            f"{source_name}: unexpected keys with no counterpart in the plugin's model: "
            f"{sorted(unknown)}"
        )
    return out, source_of


def _shape(out, key, dim, source_name):
    if key not in out:
        raise KeyError(f"{source_name}: missing keys (plugin names): ['{key}']")
    return out[key].shape[dim]


def convert_detr_state_dict(state_dict, metadata=None, args=None, source_name="checkpoint"):
    """Convert an original DETR / DETRsegm state dict to this plugin's names and class order.

    state_dict: the checkpoint's "model"; metadata: "coco_panoptic", "coco_detection" or None
    (panoptic when the checkpoint has a mask head); args: the checkpoint's "args" (Namespace or
    dict), optional.
    Returns (new state dict, DetrCheckpointInfo). Raises KeyError naming any unknown or missing key:
    the result is loaded strictly into the plugin's model of the same hyper-parameters.
    """
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{source_name}: 'model' is not a state dict of tensors")
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "module.")
    panoptic = any(k.startswith("detr.") for k in state_dict)
    metadata = metadata or ("coco_panoptic" if panoptic else "coco_detection")
    if metadata not in METADATA:
        raise ValueError(f"metadata must be one of {sorted(METADATA)}, got {metadata!r}")
    args = dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})
    out, source_of = _rename(state_dict, panoptic, source_name)

    def layers(kind):
        return len(
            {k.split(".")[3] for k in out if k.startswith(f"detr.transformer.{kind}_layers.")}
        )

    hidden_dim = _shape(out, "detr.query_embed.weight", 1, source_name)
    nheads = args.get("nheads")
    if nheads is None and panoptic:
        nheads = _shape(out, "mask_head.mask_head.lay1.weight", 1, source_name) - hidden_dim
    source_rows = _shape(out, "detr.class_embed.weight", 0, source_name)
    id_map = contiguous_id_map(metadata)
    for k in ("detr.class_embed.weight", "detr.class_embed.bias"):
        out[k] = remap_class_rows(out[k], id_map, source_name) if k in out else None
    info = DetrCheckpointInfo(
        "panoptic" if panoptic else "detection", metadata, len(id_map), source_rows - 1,
        hidden_dim, _shape(out, "detr.query_embed.weight", 0, source_name),
        layers("encoder"), layers("decoder"),
        _shape(out, "detr.transformer.encoder_layers.0.linear1.weight", 0, source_name),
        any(k.startswith("detr.transformer.encoder_norm.") for k in out),
        resnet_depth(out, "detr.backbone."), nheads, args.get("dilation"), args,
    )  # fmt: skip
    for name in (
        "hidden_dim",
        "num_queries",
        "enc_layers",
        "dec_layers",
        "dim_feedforward",
        "pre_norm",
    ):
        if name in args and args[name] != getattr(info, name):
            weights = getattr(info, name)
            raise ValueError(
                f"{source_name}: args.{name}={args[name]} but the weights say {weights}"
            )
    out = {k: v for k, v in out.items() if v is not None}
    check_loads_strictly(build_target_model(info), out, source_of, source_name)
    return out, info


def build_target_model(info):
    """The plugin's model (random weights, CPU) that a checkpoint described by ``info`` loads
    into."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..config import add_detr_panoptic_config

    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_list(config_overrides(info) + _flat({
        "MODEL.META_ARCHITECTURE": "DetrPanoptic",
        "MODEL.BACKBONE.NAME": "build_detr_resnet_backbone",
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.RESNETS.OUT_FEATURES": '["res2", "res3", "res4", "res5"]',
        "MODEL.DEVICE": "cpu", "DATASETS.TRAIN": "()",
        "DATASETS.TEST": f'("{METADATA[info.metadata]}",)',
        # detection checkpoints without args: any divisor of the width builds the same keys
        "MODEL.DETR.NHEADS": 1 if info.nheads is None else info.nheads,
    }))  # fmt: skip
    return build_model(cfg)


def convert_detr_checkpoint(source, output=None, metadata=None):
    """Read an original DETR checkpoint (path or URL), convert it, and save it to ``output`` (.pth)
    if given.

    Returns (Detectron2 checkpoint dict {"model", "__author__", "matching_heuristics"},
    DetrCheckpointInfo).
    """
    ckpt = load_state_dict_file(source)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt)
    new_sd, info = convert_detr_state_dict(state, metadata, ckpt.get("args"), str(source))
    author = "detr-panoptic-d2 convert_detr_checkpoint (facebookresearch/detr weights)"
    if output is not None:
        return save_d2_checkpoint(new_sd, output, author), info
    return {"model": new_sd, "__author__": author, "matching_heuristics": False}, info


def _flat(options):
    """{KEY: VALUE} → ["KEY", "VALUE", ...], as merge_from_list takes them."""
    return [str(x) for kv in options.items() for x in kv]


def config_overrides(info):
    """Config options (KEY VALUE list) that make the plugin's model match the converted
    checkpoint."""
    o = {
        "MODEL.RESNETS.DEPTH": info.resnet_depth, "MODEL.DETR.NUM_CLASSES": info.num_classes,
        "MODEL.DETR.HIDDEN_DIM": info.hidden_dim, "MODEL.DETR.ENC_LAYERS": info.enc_layers,
        "MODEL.DETR.DEC_LAYERS": info.dec_layers,
        "MODEL.DETR.DIM_FEEDFORWARD": info.dim_feedforward,
        "MODEL.DETR.NUM_OBJECT_QUERIES": info.num_queries, "MODEL.DETR.PRE_NORM": info.pre_norm,
    }  # fmt: skip
    if info.resnet_depth in (18, 34):
        o["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    if info.nheads is not None:
        o["MODEL.DETR.NHEADS"] = info.nheads
    if info.dilation is not None:
        o["MODEL.RESNETS.RES5_DILATION"] = 2 if info.dilation else 1
    o["MODEL.MASK_HEAD.NAME"] = "DetrMaskHead" if info.kind == "panoptic" else '""'
    if info.kind == "detection":
        o["DATASETS.TEST"] = '("coco_2017_val",)'
    return _flat(o)
