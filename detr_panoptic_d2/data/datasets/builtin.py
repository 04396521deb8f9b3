"""Registration of the data sets this plugin offers beside detectron2's builtin ones.

Mask2Former users get these names by importing mask2former; users of this plugin get the same
names, metadata and dataset dicts by calling :func:`register_plugin_datasets` (importing this
module registers nothing)::

    ade20k_panoptic_train, ade20k_panoptic_val
    coco_2017_train_panoptic_with_sem_seg, coco_2017_val_panoptic_with_sem_seg
"""

import logging
import os

from .ade20k_panoptic import (
    ADE20K_PANOPTIC_SPLITS,
    get_ade20k_panoptic_metadata,
    register_ade20k_panoptic,
)
from .coco_panoptic_semseg import (
    COCO_PANOPTIC_SEMSEG_SPLITS,
    get_coco_panoptic_with_sem_seg_metadata,
    register_coco_panoptic_with_sem_seg,
)

__all__ = ["PLUGIN_DATASET_NAMES", "default_datasets_root", "register_plugin_datasets"]

logger = logging.getLogger(__name__)

PLUGIN_DATASET_NAMES = tuple(ADE20K_PANOPTIC_SPLITS) + tuple(COCO_PANOPTIC_SEMSEG_SPLITS)


def default_datasets_root():
    """The data set root detectron2 uses: ``$DETECTRON2_DATASETS`` (``~`` expanded) or
    "datasets" (relative to the working directory)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _metadata_conflicts(name, values):
    """Keys of ``values`` that MetadataCatalog already holds for ``name`` with another value."""
    from detectron2.data import MetadataCatalog

    if name not in MetadataCatalog.list():
        return []
    meta = MetadataCatalog.get(name)
    return [k for k, v in values.items() if hasattr(meta, k) and getattr(meta, k) != v]


def register_plugin_datasets(names, root=None):
    """Register those of ``names`` that this plugin offers and DatasetCatalog does not hold yet.

    Args:
        names: a data set name or an iterable of names (e.g. ``cfg.DATASETS.TRAIN +
            cfg.DATASETS.TEST``). Names the plugin does not offer are ignored (they may be the
            user's own); names already in DatasetCatalog are left as they are (e.g. registered
            by mask2former), so calling this twice is harmless.
        root: data set root; default :func:`default_datasets_root`.

    Returns:
        tuple of the names registered by this call.
    """
    from detectron2.data import DatasetCatalog

    if isinstance(names, str):
        names = [names]
    root = default_datasets_root() if root is None else os.fspath(root)
    registered = []
    for name in dict.fromkeys(names):  # unique, in order
        if name not in PLUGIN_DATASET_NAMES or name in DatasetCatalog.list():
            continue
        if name in ADE20K_PANOPTIC_SPLITS:
            image, panoptic, panoptic_json, semantic, instances = (
                os.path.join(root, p) for p in ADE20K_PANOPTIC_SPLITS[name]
            )
            metadata = get_ade20k_panoptic_metadata()
            args = (name, metadata, image, panoptic, semantic, panoptic_json, instances)
            register, evaluator_type, extra = register_ade20k_panoptic, "ade20k_panoptic_seg", {}
        else:
            image, panoptic, panoptic_json, semantic, instances = (
                os.path.join(root, p) for p in COCO_PANOPTIC_SEMSEG_SPLITS[name]
            )
            metadata = get_coco_panoptic_with_sem_seg_metadata()
            args = (name, metadata, image, panoptic, panoptic_json, semantic, instances)
            register, evaluator_type = register_coco_panoptic_with_sem_seg, "coco_panoptic_seg"
            extra = {"sem_seg_root": semantic}
        # MetadataCatalog refuses to change a value: leave a name whose metadata was set otherwise.
        conflicts = _metadata_conflicts(name, {
            **metadata, **extra, "image_root": image, "panoptic_root": panoptic,
            "panoptic_json": panoptic_json, "json_file": instances,
            "evaluator_type": evaluator_type, "ignore_label": 255, "label_divisor": 1000,
        })
        if conflicts:
            logger.warning("Not registering %s: MetadataCatalog already holds other values for %s",
                           name, ", ".join(sorted(conflicts)))
            continue
        register(*args)
        registered.append(name)
    return tuple(registered)
