"""Export of DETR panoptic models for deployment without Detectron2: the graph wrapper (uint8 image
→ per-query class logits, boxes and mask logits) and the TorchScript / ONNX exporters with their
``deploy.json``. The runtime side (test resize, panoptic merge, outputs) is
``detr_panoptic_runtime``."""

from . import exporter as _exporter
from .exporter import (
    ONNX_OPSET,
    deploy_metadata,
    export_model,
    export_onnx,
    export_torchscript,
    sample_input,
    trace_wrapper,
)
from .wrapper import MASK_QUERY_MODES, OUTPUT_NAMES, PanopticExportWrapper

# The exporter's names and the wrapper's.
__all__ = sorted(_exporter.__all__ + ["MASK_QUERY_MODES", "OUTPUT_NAMES", "PanopticExportWrapper"])
