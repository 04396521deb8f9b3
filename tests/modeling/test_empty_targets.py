"""A stage-2 batch without targets (crowd-only images, crops that emptied them): zero mask losses
whose backward reaches every trainable parameter (zero gradients, none missing: DDP needs each
used), and a batch mixing such images with others gives the losses of the others alone."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input


@pytest.fixture(scope="module")
def stage1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage1") / "model_final.pth"
    torch.save({"model": build_tiny_model(seed=0).state_dict()}, path)
    return str(path)


def _stage2(stage1_file):
    model = build_tiny_model(mask_head=True, seed=1, **{"MODEL.DETR.FROZEN_WEIGHTS": stage1_file})
    return model.train()


def _losses(model, batch):
    with EventStorage():
        return model(batch)


def test_batch_without_targets_zero_loss_zero_gradients_everywhere(stage1_file):
    model = _stage2(stage1_file)
    losses = _losses(model, [make_input(64, 96, 0), make_input(64, 96, 0, seed=1)])
    assert set(losses) == {"loss_mask", "loss_dice"}
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()  # no "element 0 of tensors does not require grad"
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("mask_head.") for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) == 0, name


def test_mask_head_on_zero_rows():
    model = build_tiny_model(mask_head=True).eval()
    images, mask = model.preprocess_image([make_input(64, 96, 0)])
    with torch.no_grad():
        _, features = model.detr(images.tensor, mask)
    none = torch.zeros(0, dtype=torch.int64)
    expected_shape = (0, *features["backbone"]["res2"].shape[-2:])
    with torch.no_grad():
        out = model.mask_head(features, none, none)
    assert out.shape == expected_shape and out.dtype == torch.float32
    out = model.mask_head(features, none, none)  # with autograd: through the head's parameters
    assert out.shape == expected_shape and out.dtype == torch.float32 and out.requires_grad
    params = [p for p in model.mask_head.parameters()]
    grads = torch.autograd.grad(out.sum(), params, allow_unused=False)
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("empty_first", [False, True])
def test_mixed_batch_gives_the_losses_of_its_images_with_targets(stage1_file, empty_first):
    """Same-size images, frozen (eval-mode) body: an image without targets adds nothing, so the
    batch's losses (normalized by the same target count) are those of the other image alone."""
    model = _stage2(stage1_file)
    full, empty = make_input(64, 96, 3, seed=2), make_input(64, 96, 0, seed=3)
    alone = _losses(model, [full])
    mixed = _losses(model, [empty, full] if empty_first else [full, empty])
    assert set(mixed) == set(alone) == {"loss_mask", "loss_dice"}
    for k in alone:
        assert alone[k].item() > 0
        torch.testing.assert_close(mixed[k], alone[k], rtol=1e-5, atol=1e-6)
