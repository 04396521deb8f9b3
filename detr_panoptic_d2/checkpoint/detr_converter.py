"""Original DETR checkpoints (facebookresearch/detr) → this plugin's Detectron2 checkpoints.

Panoptic checkpoints (``DETRsegm``): keys ``detr.*`` (backbone, transformer, heads), ``bbox_attention.*`` and
``mask_head.*``; 250 classes + no-object, rows indexed by COCO panoptic category id.
Detection checkpoints (``DETR``): the same without the ``detr.`` prefix and the mask parts; 91 classes +
no-object, rows indexed by COCO category id.

Renaming (original → plugin):

=====================================================  ===================================================
``[detr.]backbone.0.body.<torchvision ResNet>``        ``backbone.<Detectron2 ResNet>`` (torchvision_converter)
``[detr.]transformer.encoder.layers.{i}.*``            ``transformer.encoder_layers.{i}.*``
``[detr.]transformer.decoder.layers.{i}.*``            ``transformer.decoder_layers.{i}.*``
``[detr.]transformer.encoder.norm.*`` (pre-norm)       ``transformer.encoder_norm.*``
``[detr.]transformer.decoder.norm.*``                  ``transformer.decoder_norm.*``
``[detr.]{input_proj,query_embed,bbox_embed}.*``       same
``[detr.]class_embed.*``                               same, rows remapped to contiguous ids (below)
``bbox_attention.*``                                   ``mask_head.bbox_attention.*``
``mask_head.*``                                        ``mask_head.mask_head.*``
=====================================================  ===================================================

Class rows: the row of contiguous id ``c`` is the source row of the dataset id ``d`` with ``map[d] == c``
(Detectron2's builtin metadata: ``coco_2017_val_panoptic`` things + stuff → 133, ``coco_2017_val`` things → 80);
the no-object row (last) stays last.

Every source key must be consumed; unknown or missing keys raise a KeyError naming them.
"""
import re
from dataclasses import dataclass, field

import torch

from .torchvision_converter import convert_resnet_state_dict, load_state_dict_file, save_d2_checkpoint

__all__ = [
    "METADATA",
    "DetrCheckpointInfo",
    "contiguous_id_map",
    "remap_class_rows",
    "convert_detr_state_dict",
    "convert_detr_checkpoint",
    "config_overrides",
]

# --metadata choice → Detectron2 builtin data set whose metadata gives the dataset id → contiguous id map
METADATA = {"coco_panoptic": "coco_2017_val_panoptic", "coco_detection": "coco_2017_val"}

_ENC_LEAF = r"(self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)|linear[12]\.(weight|bias)" \
            r"|norm[12]\.(weight|bias))"
_DEC_LEAF = r"((self_attn|multihead_attn)\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)" \
            r"|linear[12]\.(weight|bias)|norm[123]\.(weight|bias))"
_ENC_LEAVES = [f"self_attn.{x}" for x in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")] + [
    f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in ("weight", "bias")]
_DEC_LEAVES = [f"{a}.{x}" for a in ("self_attn", "multihead_attn")
               for x in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")] + [
    f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in ("weight", "bias")]
_MASK_LEAVES = [f"{m}.{p}" for m in [f"lay{i}" for i in range(1, 6)] + [f"gn{i}" for i in range(1, 6)]
                + ["out_lay", "adapter1", "adapter2", "adapter3"] for p in ("weight", "bias")]
_ATTN_LEAVES = [f"{m}.{p}" for m in ("q_linear", "k_linear") for p in ("weight", "bias")]

# (source regex without the "detr." prefix, replacement) for the non-backbone DETR keys
_DETR_RULES = [
    (rf"^transformer\.encoder\.layers\.(\d+)\.{_ENC_LEAF}$", lambda m: f"transformer.encoder_layers.{m.group(1)}."
     + m.string.split(".", 4)[4]),
    (rf"^transformer\.decoder\.layers\.(\d+)\.{_DEC_LEAF}$", lambda m: f"transformer.decoder_layers.{m.group(1)}."
     + m.string.split(".", 4)[4]),
    (r"^transformer\.encoder\.norm\.(weight|bias)$", lambda m: f"transformer.encoder_norm.{m.group(1)}"),
    (r"^transformer\.decoder\.norm\.(weight|bias)$", lambda m: f"transformer.decoder_norm.{m.group(1)}"),
    (r"^(input_proj\.(weight|bias)|query_embed\.weight|class_embed\.(weight|bias)"
     r"|bbox_embed\.layers\.[0-2]\.(weight|bias))$", lambda m: m.string),
]
_MASK_RULES = [
    (r"^bbox_attention\.((q_linear|k_linear)\.(weight|bias))$", lambda m: f"mask_head.bbox_attention.{m.group(1)}"),
    (r"^mask_head\.((lay[1-5]|gn[1-5]|out_lay|adapter[1-3])\.(weight|bias))$",
     lambda m: f"mask_head.mask_head.{m.group(1)}"),
]
_BASE_KEYS = ["input_proj.weight", "input_proj.bias", "query_embed.weight", "class_embed.weight",
              "class_embed.bias", "transformer.decoder_norm.weight", "transformer.decoder_norm.bias"] + [
    f"bbox_embed.layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]


@dataclass
class DetrCheckpointInfo:
    """What the converter learned about the source checkpoint (hyper-parameters and class mapping)."""

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
    """{dataset category id: contiguous id} of ``metadata`` ("coco_panoptic" / "coco_detection" / a Detectron2
    data set name)."""
    import detectron2.data.datasets  # noqa: F401  (registers the builtin data sets)
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(METADATA.get(metadata, metadata))
    mapping = dict(meta.thing_dataset_id_to_contiguous_id)
    mapping.update(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}))
    n = len(mapping)
    if sorted(mapping.values()) != list(range(n)):
        raise ValueError(f"metadata {metadata!r}: contiguous ids are not 0..{n - 1}")
    return mapping


def remap_class_rows(tensor, id_map, source_name="checkpoint"):
    """(R, ...) class-head rows indexed by dataset id, last row no-object → (K + 1, ...) rows indexed by
    contiguous id, last row the same no-object row."""
    num_rows = tensor.shape[0]
    if max(id_map) >= num_rows - 1:
        raise ValueError(f"{source_name}: class_embed has {num_rows} rows (incl. no-object) but the metadata has "
                         f"category id {max(id_map)}; wrong --metadata?")
    order = [d for d, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    index = torch.tensor(order + [num_rows - 1], dtype=torch.long)
    return tensor.index_select(0, index).clone()


def _layer_indices(keys, prefix):
    return sorted({int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)})


def _args_dict(args):
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    return dict(vars(args)) if hasattr(args, "__dict__") else {}


def convert_detr_state_dict(state_dict, metadata=None, args=None, source_name="checkpoint"):
    """Convert an original DETR / DETRsegm state dict to this plugin's names and class order.

    state_dict: the checkpoint's "model"; metadata: "coco_panoptic", "coco_detection" or None (panoptic when
    the checkpoint has a mask head); args: the checkpoint's "args" (Namespace or dict), optional.
    Returns (new state dict, DetrCheckpointInfo). Raises KeyError naming any unknown or missing key.
    """
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{source_name}: 'model' is not a state dict of tensors")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    keys = set(state_dict)
    panoptic = any(k.startswith("detr.") for k in keys)
    detr_prefix = "detr." if panoptic else ""
    if metadata is None:
        metadata = "coco_panoptic" if panoptic else "coco_detection"
    if metadata not in METADATA:
        raise ValueError(f"metadata must be one of {sorted(METADATA)}, got {metadata!r}")
    args = _args_dict(args)

    out, used = convert_resnet_state_dict(state_dict, detr_prefix + "backbone.0.body.", "backbone.", source_name)
    rules = [(re.compile(p), f, detr_prefix) for p, f in _DETR_RULES]
    if panoptic:
        rules += [(re.compile(p), f, "") for p, f in _MASK_RULES]
    unknown = []
    for k, v in state_dict.items():
        if k in used:
            continue
        for rx, fn, prefix in rules:
            if k.startswith(prefix):
                m = rx.match(k[len(prefix):])
                if m:
                    out[fn(m)] = v
                    used.add(k)
                    break
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"{source_name}: unexpected keys with no counterpart in the plugin's model: {sorted(unknown)}")

    # Completeness: every module the plugin's model has must be there, with all its parameters.
    enc = _layer_indices(out, "transformer.encoder_layers.")
    dec = _layer_indices(out, "transformer.decoder_layers.")
    pre_norm = "transformer.encoder_norm.weight" in out or "transformer.encoder_norm.bias" in out
    expected = list(_BASE_KEYS)
    expected += [f"transformer.encoder_layers.{i}.{x}" for i in range(max(enc, default=-1) + 1) for x in _ENC_LEAVES]
    expected += [f"transformer.decoder_layers.{i}.{x}" for i in range(max(dec, default=-1) + 1) for x in _DEC_LEAVES]
    if pre_norm:
        expected += ["transformer.encoder_norm.weight", "transformer.encoder_norm.bias"]
    if panoptic:
        expected += [f"mask_head.bbox_attention.{x}" for x in _ATTN_LEAVES]
        expected += [f"mask_head.mask_head.{x}" for x in _MASK_LEAVES]
    missing = [k for k in expected if k not in out]
    if not enc:
        missing.append("transformer.encoder_layers.0.*")
    if not dec:
        missing.append("transformer.decoder_layers.0.*")
    if missing:
        raise KeyError(f"{source_name}: missing keys (plugin names): {missing[:20]}"
                       + (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))

    id_map = contiguous_id_map(metadata)
    source_rows = out["class_embed.weight"].shape[0]
    out["class_embed.weight"] = remap_class_rows(out["class_embed.weight"], id_map, source_name)
    out["class_embed.bias"] = remap_class_rows(out["class_embed.bias"], id_map, source_name)
    num_classes = len(id_map)

    hidden_dim = out["query_embed.weight"].shape[1]
    nheads = args.get("nheads")
    if nheads is None and panoptic:
        nheads = out["mask_head.mask_head.lay1.weight"].shape[1] - hidden_dim
    blocks = tuple(len(_layer_indices(out, f"backbone.res{s}.")) for s in (2, 3, 4, 5))
    bottleneck = "backbone.res2.0.conv3.weight" in out
    depth = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
             ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}.get((blocks, bottleneck))
    if depth is None:
        raise ValueError(f"{source_name}: ResNet with blocks {blocks} is not a standard depth")
    info = DetrCheckpointInfo(
        kind="panoptic" if panoptic else "detection", metadata=metadata, num_classes=num_classes,
        source_num_classes=source_rows - 1, hidden_dim=hidden_dim, num_queries=out["query_embed.weight"].shape[0],
        enc_layers=len(enc), dec_layers=len(dec),
        dim_feedforward=out["transformer.encoder_layers.0.linear1.weight"].shape[0], pre_norm=pre_norm,
        resnet_depth=depth, nheads=nheads, dilation=args.get("dilation"), args=args,
    )
    for name, value in (("hidden_dim", info.hidden_dim), ("num_queries", info.num_queries),
                        ("enc_layers", info.enc_layers), ("dec_layers", info.dec_layers),
                        ("dim_feedforward", info.dim_feedforward), ("pre_norm", info.pre_norm)):
        if name in args and args[name] != value:
            raise ValueError(f"{source_name}: args.{name}={args[name]} but the weights say {value}")
    return out, info


def convert_detr_checkpoint(source, output=None, metadata=None):
    """Read an original DETR checkpoint (path or URL), convert it, and save it to ``output`` (.pth) if given.

    Returns (Detectron2 checkpoint dict {"model", "__author__", "matching_heuristics"}, DetrCheckpointInfo).
    """
    ckpt = load_state_dict_file(source)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{source}: expected a dict checkpoint, got {type(ckpt).__name__}")
    model = ckpt.get("model", ckpt)
    new_sd, info = convert_detr_state_dict(model, metadata, ckpt.get("args"), source_name=str(source))
    author = "detr-panoptic-d2 convert_detr_checkpoint (facebookresearch/detr weights)"
    if output is not None:
        out = save_d2_checkpoint(new_sd, output, author)
    else:
        out = {"model": new_sd, "__author__": author, "matching_heuristics": False}
    return out, info


def config_overrides(info):
    """Config options (KEY VALUE list) that make the plugin's model match the converted checkpoint."""
    o = [
        "MODEL.RESNETS.DEPTH", info.resnet_depth,
        "MODEL.DETR.NUM_CLASSES", info.num_classes,
        "MODEL.DETR.HIDDEN_DIM", info.hidden_dim,
        "MODEL.DETR.ENC_LAYERS", info.enc_layers,
        "MODEL.DETR.DEC_LAYERS", info.dec_layers,
        "MODEL.DETR.DIM_FEEDFORWARD", info.dim_feedforward,
        "MODEL.DETR.NUM_OBJECT_QUERIES", info.num_queries,
        "MODEL.DETR.PRE_NORM", info.pre_norm,
    ]
    if info.resnet_depth in (18, 34):
        o += ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    if info.nheads is not None:
        o += ["MODEL.DETR.NHEADS", info.nheads]
    if info.dilation is not None:
        o += ["MODEL.RESNETS.RES5_DILATION", 2 if info.dilation else 1]
    o += ["MODEL.MASK_HEAD.NAME", "DetrMaskHead" if info.kind == "panoptic" else '""']
    if info.kind == "detection":
        o += ["DATASETS.TEST", '("coco_2017_val",)']
    return [str(x) for x in o]
