"""``deploy.json``: what the runtime needs beside the model file (written by
``tools/export_model.py``).

Keys (``FORMAT_VERSION`` 1):

- format_version: 1; format: "torchscript" | "onnx"; model_file: "model.ts" | "model.onnx" (next to
  deploy.json); device: the device a TorchScript model was traced on, "cpu" (its graph runs on any
  device: the runtime loads it with ``map_location``; ONNX: "any"); onnx_opset
- input: {"name": "image", "dtype": "uint8", "layout": "CHW", "channels": "RGB"}
- outputs: ["pred_logits", "pred_boxes", "mask_logits", "mask_query_index"]
- mask_queries: "kept" (masks of the queries that pass export_threshold) | "all"
- num_queries, num_classes; class_names, is_thing, dataset_category_ids (the data set's ids),
  colors (RGB): one entry per contiguous class; thing_classes, stuff_classes: contiguous ids
- test_resize: {"min_size", "max_size", "interp": "bilinear"} (Detectron2's ResizeShortestEdge)
- panoptic: {"merge": "detr" | "maskformer", "threshold", "min_segment_area", "stuff_merge",
  "overlap_threshold"}
- pixel_mean, pixel_std, source: informational (normalization is inside the graph)
"""

import json
import os

FORMAT_VERSION = 1
FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
MERGES = ("detr", "maskformer")
REQUIRED = (
    "format",
    "model_file",
    "mask_queries",
    "num_classes",
    "class_names",
    "is_thing",
    "dataset_category_ids",
    "test_resize",
    "panoptic",
)

__all__ = ["FORMAT_VERSION", "FORMATS", "load_deploy", "save_deploy", "validate_deploy"]


def validate_deploy(meta, where="deploy.json"):
    """Raise ValueError naming the first missing or inconsistent key."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{where}: format_version {meta['format_version']} is newer than this runtime's "
            f"{FORMAT_VERSION}"
        )
    if meta["format"] not in FORMATS:
        raise ValueError(
            f"{where}: format must be one of {sorted(FORMATS)}, got {meta['format']!r}"
        )
    k = meta["num_classes"]
    for key in ("class_names", "is_thing", "dataset_category_ids"):
        if len(meta[key]) != k:
            raise ValueError(f"{where}: {key} has {len(meta[key])} entries, num_classes is {k}")
    pan = meta["panoptic"]
    if pan.get("merge") not in MERGES:
        raise ValueError(
            f"{where}: panoptic.merge must be one of {MERGES}, got {pan.get('merge')!r}"
        )
    for key in ("min_size", "max_size"):
        if key not in meta["test_resize"]:
            raise ValueError(f"{where}: test_resize.{key} is missing")
    return meta


def save_deploy(meta, folder):
    validate_deploy(meta)
    path = os.path.join(folder, "deploy.json")
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return path


def load_deploy(folder):
    """The validated ``deploy.json`` of an export folder (or the path of the file itself)."""
    path = folder if folder.endswith(".json") else os.path.join(folder, "deploy.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no deploy.json in {folder} (written by tools/export_model.py)")
    with open(path) as f:
        meta = json.load(f)
    return validate_deploy(meta, path)
