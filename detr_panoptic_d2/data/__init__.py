from .dataset_mapper import DetrPanopticDatasetMapper, build_detr_augmentations
from .datasets import PLUGIN_DATASET_NAMES, prepare_coco_panoptic_semseg, register_plugin_datasets
from .registration import register_datasets_from_cfg
from .scenes import THING_SHAPES, draw_scene
from .toy_dataset import (
    generate_toy_panoptic,
    register_toy_panoptic,
    register_toy_panoptic_from_cfg,
)
