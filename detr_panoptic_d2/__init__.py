"""DETR for panoptic segmentation as a Detectron2 plugin. Importing registers the plugin's parts:
the ``DetrPanoptic`` META_ARCH and the ``DetrMaskHead`` in ``MASK_HEAD_REGISTRY``."""

from . import data, modeling  # noqa: F401  (registers the meta-architecture and mask heads)
from .config import add_detr_panoptic_config
from .modeling import MASK_HEAD_REGISTRY, DetrPanoptic

__all__ = ["add_detr_panoptic_config", "DetrPanoptic", "MASK_HEAD_REGISTRY"]
