"""The one place where the plugin registers data sets: called once by the tools' set-up
(``tools/train_net.py``, ``tools/demo.py``), or by your own script after
``get_cfg``/``merge_from_file`` and before building anything."""

from .datasets import register_plugin_datasets
from .toy_dataset import register_toy_panoptic_from_cfg


def register_datasets_from_cfg(cfg):
    """Register the data sets named in ``cfg.DATASETS`` that the plugin provides: the toy splits
    (generated on first use), and ADE20K panoptic / COCO panoptic with semantic ground truth as
    Mask2Former registers them (names already registered, e.g. by Mask2Former itself, are left
    alone). Detectron2's builtin sets are registered by Detectron2; your own sets by you."""
    register_toy_panoptic_from_cfg(cfg)
    register_plugin_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
