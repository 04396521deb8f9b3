"""MODEL.DEVICE through the Python API: build_model rejects a device torch cannot parse, CUDA where
it is unavailable and a CUDA index past the device count, naming MODEL.DEVICE (tools/train_net.py
falls back to the CPU instead: tests/tools/test_uninitialized_cli.py)."""

import pytest
import torch
from detectron2.modeling import build_model
from detr_test_utils import tiny_cfg


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_unavailable_names_the_key(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=rf"MODEL.DEVICE is '{device}' but CUDA is not available"):
        build_model(tiny_cfg(**{"MODEL.DEVICE": device}))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_unparsable_device_names_the_key(device):
    with pytest.raises(ValueError, match=rf"MODEL.DEVICE must be a torch device .*got '{device}'"):
        build_model(tiny_cfg(**{"MODEL.DEVICE": device}))


def test_cuda_index_past_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"MODEL.DEVICE is 'cuda:2' but this machine has 2 CUDA"):
        build_model(tiny_cfg(**{"MODEL.DEVICE": "cuda:2"}))


def test_cpu_builds():
    assert build_model(tiny_cfg(**{"MODEL.DEVICE": "cpu"})).device == torch.device("cpu")
