"""Fixtures of the export tests: a tiny toy stage-2 model whose queries pass the threshold (class
head weights scaled up, so that they are confident and varied), exported once per session in each
format."""

import pytest
import torch
from _export_helpers import export_cfg, segment_model
from detr_test_utils import single_thread  # noqa: F401  (autouse: one thread)
from tiny_toy import generate_tiny_toy


@pytest.fixture(scope="session")
def export_toy_root(tmp_path_factory):
    return generate_tiny_toy(tmp_path_factory.mktemp("export_toy"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory, export_toy_root):
    """{"cfg", "model", "ts", "onnx", "onnx_all"}: the tiny model and its export folders."""
    from detr_panoptic_d2.export import export_model

    out = tmp_path_factory.mktemp("exported")
    cfg = export_cfg(str(out), export_toy_root)
    model = segment_model(cfg)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = {"cfg": cfg, "model": model}
        for key, fmt, mode in (
            ("ts", "torchscript", "kept"),
            ("onnx", "onnx", "kept"),
            ("onnx_all", "onnx", "all"),
        ):
            folder = str(out / key)
            export_model(cfg, model, fmt, folder, mask_queries=mode)
            res[key] = folder
    finally:
        torch.set_num_threads(n)
    return res
