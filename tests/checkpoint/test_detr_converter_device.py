"""The converter's class-row remapping on tensors of any device: the index it builds follows the
tensor (a state dict loaded with ``map_location="cuda"`` is converted where it is)."""

import detectron2.data.datasets  # noqa: F401  (builtin metadata)
import torch

from detr_panoptic_d2.checkpoint import contiguous_id_map, remap_class_rows


def test_class_rows_remap_on_the_tensors_device():
    id_map = contiguous_id_map("coco_detection")
    rows = torch.arange(92.0)[:, None].repeat(1, 3)  # row r holds r: the remap shows which it took
    ref = remap_class_rows(rows, id_map)
    # a tensor on another device than the CPU (meta: a CPU stand-in for CUDA) is remapped there
    got = remap_class_rows(rows.to("meta"), id_map)
    assert got.device.type == "meta" and got.shape == ref.shape
    # and on the CPU with another default device, the index is still made on the CPU
    torch.set_default_device("meta")
    try:
        again = remap_class_rows(rows, id_map)
    finally:
        torch.set_default_device(None)
    assert again.device.type == "cpu" and torch.equal(again, ref)
    assert ref[:, 0].tolist() == [*sorted(id_map, key=id_map.get), 91]
