"""Data sets the plugin registers on request (nothing is registered on import).

- :func:`register_plugin_datasets`: ``ade20k_panoptic_{train,val}`` and
  ``coco_2017_{train,val}_panoptic_with_sem_seg``, as Mask2Former registers them.
- :func:`prepare_coco_panoptic_semseg`: the semantic PNGs of ``*_with_sem_seg`` from the COCO
  panoptic annotations.
"""

from .ade20k_panoptic import (
    ADE20K_150_CATEGORIES,
    ADE20K_INSTANCE_CATEGORIES,
    get_ade20k_panoptic_metadata,
    load_ade20k_panoptic_json,
    register_ade20k_panoptic,
)
from .builtin import PLUGIN_DATASET_NAMES, default_datasets_root, register_plugin_datasets
from .coco_panoptic_semseg import (
    get_coco_panoptic_with_sem_seg_metadata,
    load_coco_panoptic_with_sem_seg_json,
    prepare_coco_panoptic_semseg,
    register_coco_panoptic_with_sem_seg,
    semantic_from_panoptic,
    write_semantic_from_panoptic,
)
