"""Checkpoints: loading into the model (the checkpointer, stage-2 and mask-head loads), converters
of original DETR and torchvision ResNet weights into this plugin's Detectron2 checkpoints, file
IO."""

from .detr_converter import (
    METADATA,
    DetrCheckpointInfo,
    config_overrides,
    contiguous_id_map,
    convert_detr_checkpoint,
    convert_detr_state_dict,
    remap_class_rows,
)
from .io import load_state_dict_file, save_d2_checkpoint
from .loading import (
    DetrCheckpointer,
    load_detr_body,
    load_submodule,
    read_checkpoint_state,
    rename_legacy_keys,
)
from .official import OFFICIAL_PREFIX, OfficialDetrHandler
from .torchvision_converter import (
    convert_resnet_state_dict,
    convert_torchvision_resnet,
    rename_torchvision_resnet_key,
)

__all__ = [
    "DetrCheckpointer",
    "OFFICIAL_PREFIX",
    "OfficialDetrHandler",
    "load_detr_body",
    "load_submodule",
    "read_checkpoint_state",
    "rename_legacy_keys",
    "METADATA",
    "DetrCheckpointInfo",
    "config_overrides",
    "contiguous_id_map",
    "convert_detr_checkpoint",
    "convert_detr_state_dict",
    "remap_class_rows",
    "convert_resnet_state_dict",
    "convert_torchvision_resnet",
    "load_state_dict_file",
    "rename_torchvision_resnet_key",
    "save_d2_checkpoint",
]
