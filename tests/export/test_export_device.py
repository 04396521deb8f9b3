"""Exported TorchScript graphs are portable: traced on the CPU, they name no device in their code,
so that ``torch.jit.load(map_location=...)`` runs them anywhere; a graph that does name one is
refused by the runtime, with the reason, on any other device."""

import json
import os
import shutil
import warnings

import pytest
import torch

from detr_panoptic_runtime import ExportedPanopticModel
from detr_panoptic_runtime.runner import pinned_devices


def _image(h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).numpy()


def test_exported_graph_names_no_device(exported):
    meta = json.load(open(os.path.join(exported["ts"], "deploy.json")))
    assert meta["device"] == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(os.path.join(exported["ts"], "model.ts"))
    assert pinned_devices(module) == []


def test_export_recorded_on_another_device_runs_where_it_is_loaded(exported, tmp_path):
    """deploy.json saying the export was traced on a GPU (an export of another machine): the graph
    is loaded on the requested device (the CPU here) and gives the same outputs, bit for bit."""
    folder = tmp_path / "gpu_export"
    shutil.copytree(exported["ts"], folder)
    meta = json.load(open(folder / "deploy.json"))
    meta["device"] = "cuda:0"
    json.dump(meta, open(folder / "deploy.json", "w"))
    ref = ExportedPanopticModel(exported["ts"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no device warning: the graph runs where it is loaded
        runner = ExportedPanopticModel(str(folder), device="cpu")
    assert runner.device == torch.device("cpu")
    image = _image()
    got, want = runner.run_graph(image), ref.run_graph(image)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g.device.type == "cpu" and torch.equal(g, w)


class _Pinned(torch.nn.Module):
    """A graph that creates a tensor on the device it was traced on."""

    def forward(self, image):
        return image.float() + torch.ones(1, device=image.device)


def test_graph_pinned_to_another_device_is_refused_clearly(exported, tmp_path):
    folder = tmp_path / "pinned"
    shutil.copytree(exported["ts"], folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Pinned(), torch.zeros(3, 4, 4, dtype=torch.uint8))
        torch.jit.save(traced, str(folder / "model.ts"))
    assert pinned_devices(traced) == ["cpu"]
    ExportedPanopticModel(str(folder), device="cpu")  # where it was traced: fine
    with pytest.raises(RuntimeError, match=r"creates tensors on cpu .*cannot run on meta"):
        ExportedPanopticModel(str(folder), device="meta")
