"""Runtime of exported DETR panoptic models: reads ``deploy.json``, applies Detectron2's test
resize, runs ``model.ts`` (torch) or ``model.onnx`` (ONNX Runtime) and merges the per-query outputs
into a panoptic segmentation with the same code as the eager model (:mod:`.postprocess`, torch or
numpy).

Needs numpy and Pillow, plus torch or onnxruntime for the model file; imports neither Detectron2 nor
``detr_panoptic_d2`` (and not torch unless a TorchScript model or torch tensors are used).
"""

from .deploy import FORMAT_VERSION, load_deploy, save_deploy, validate_deploy
from .outputs import draw_overlay, id2rgb, rgb2id, write_json, write_png
from .postprocess import (
    mask_rows,
    maskformer_merge,
    merge_kept_masks,
    panoptic_inference,
    panoptic_merge,
    select_queries,
    upsample_masks,
)
from .preprocess import preprocess, read_image, resize_image, resized_shape
from .runner import ExportedPanopticModel

__all__ = [
    "FORMAT_VERSION",
    "ExportedPanopticModel",
    "draw_overlay",
    "id2rgb",
    "load_deploy",
    "mask_rows",
    "maskformer_merge",
    "merge_kept_masks",
    "panoptic_inference",
    "panoptic_merge",
    "preprocess",
    "read_image",
    "resize_image",
    "resized_shape",
    "rgb2id",
    "save_deploy",
    "select_queries",
    "upsample_masks",
    "validate_deploy",
    "write_json",
    "write_png",
]
