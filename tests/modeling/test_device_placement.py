"""Device placement: every tensor the package creates on a hot path is created on the device of the
data it meets, never on the default device.

A CPU stand-in for a CUDA device mismatch: the model and its inputs are on the CPU while
``torch.set_default_device("meta")`` is in force, so a tensor created without an explicit device
lands on ``meta`` and fails when it meets a CPU tensor (as a CPU tensor created on a GPU machine
fails when it meets a CUDA one). Indexing a CPU tensor with a ``meta`` index can pass without an
error, so every run is also compared with the same run under the normal default device: same seed,
same inputs, the same computation, hence exactly equal losses, gradients and outputs.
"""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from detectron2.data import Metadata
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input
from PIL import Image

from detr_panoptic_d2.visualization import explain_queries

STAGE1_OPTIONS = {"MODEL.DETR.GROUPS": 2, "MODEL.DETR.DN.COPIES": 2}


@contextlib.contextmanager
def meta_default_device():
    """``torch.set_default_device("meta")`` for the block, with one library call scoped out.

    Detectron2's ``ImageList.from_tensors`` computes the padded batch size from the images' shapes
    with ``torch.as_tensor`` (no device): host-side shape arithmetic, on the CPU on a GPU machine
    too, where the CPU is the default device; its padded batch follows the images' device
    (``move_device_like``). It runs with the CPU as the default device."""
    original = ImageList.from_tensors

    def from_tensors(*args, **kwargs):
        with torch.device("cpu"):
            return original(*args, **kwargs)

    with mock.patch.object(ImageList, "from_tensors", staticmethod(from_tensors)):
        torch.set_default_device("meta")
        try:
            yield
        finally:
            torch.set_default_device(None)


def _batch():
    # 3 and 1 targets, different sizes: padding, and padding slots in every denoising copy
    return [make_input(64, 96, 3), make_input(96, 64, 1, seed=1)]


def _train_step(model, batch, seed):
    """Losses and gradients of one training step (noise, dropout drawn from ``seed``)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with EventStorage() as storage:
        losses = model(batch)
        metrics = dict(storage.latest())
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (
        {k: v.detach() for k, v in losses.items()},
        grads,
        {k: v for k, (v, _) in metrics.items()},
    )


def _assert_same_step(model, batch):
    ref = _train_step(model, batch, seed=3)
    with meta_default_device():
        got = _train_step(model, batch, seed=3)
    for ref_part, got_part in zip(ref[:2], got[:2]):
        assert set(got_part) == set(ref_part) and ref_part
        for k, v in ref_part.items():
            assert got_part[k].device.type == "cpu", k
            assert torch.equal(got_part[k], v), k  # the same computation: exactly equal
    assert got[2] == ref[2]  # the metrics put to the event storage
    return ref


def test_stage1_step_with_groups_and_denoising_creates_nothing_on_the_default_device():
    model = build_tiny_model(**STAGE1_OPTIONS).train()
    losses, grads, _ = _assert_same_step(model, _batch())
    assert {"loss_ce_dn", "loss_bbox_dn"} <= set(losses)
    assert model.detr.training_queries.dn_box_embed[0].weight.grad is not None


@pytest.mark.parametrize("matched_only", [True, False])
def test_stage2_step_creates_nothing_on_the_default_device(tmp_path, matched_only):
    path = tmp_path / "stage1.pth"
    torch.save({"model": build_tiny_model().state_dict()}, path)
    model = build_tiny_model(
        mask_head=True,
        seed=1,
        **{
            "MODEL.DETR.FROZEN_WEIGHTS": str(path),
            "MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY": matched_only,
        },
    ).train()
    losses, grads, _ = _assert_same_step(model, _batch())
    assert set(losses) == {"loss_mask", "loss_dice"}
    assert grads and all(n.startswith("mask_head.") for n in grads)


def _flatten(results):
    """The tensors of inference results, by name."""
    out = {}
    for i, r in enumerate(results):
        seg, info = r["panoptic_seg"]
        out[f"{i}.panoptic"] = seg
        out[f"{i}.segments"] = info
        out[f"{i}.sem_seg"] = r["sem_seg"]
        for k, v in r["instances"].get_fields().items():
            out[f"{i}.{k}"] = v.tensor if hasattr(v, "tensor") else v
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_inference_creates_nothing_on_the_default_device(precision):
    model = build_tiny_model(
        mask_head=True,
        **{
            "MODEL.DETR.TEST.SEMANTIC_ON": True,
            "MODEL.DETR.TEST.PRECISION": precision,
            "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD": 0.0,  # random weights: keep queries
        },
    ).eval()
    batch = _batch()
    ref = _flatten(model(batch))
    with meta_default_device():
        got = _flatten(model(batch))
    assert set(got) == set(ref)
    assert len(ref["0.pred_masks"]) > 0  # instances with masks, so the mask path ran
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert got[k].device.type == "cpu", k
            assert torch.equal(got[k], v), k
        else:
            assert got[k] == v, k


def test_explain_queries_creates_nothing_on_the_default_device(tmp_path):
    model = build_tiny_model(mask_head=True).eval()
    model.postprocessor.object_mask_threshold = 0.0  # random weights: draw some queries
    x = make_input(64, 96, 0)
    meta = Metadata(stuff_classes=[f"c{i}" for i in range(5)])
    with torch.no_grad():
        rows = explain_queries(model, x, meta, str(tmp_path / "ref.png"))
        with meta_default_device():
            rows_meta = explain_queries(model, x, meta, str(tmp_path / "meta.png"))
    assert rows == rows_meta > 0
    ref, got = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("ref", "meta"))
    assert np.array_equal(ref, got)
