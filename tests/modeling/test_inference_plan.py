"""When the model makes and drops its inference plan: never a stale copy of the weights after
train(), an optimizer step (in either mode), load_state_dict (into the model or a part), .to(), or
an explicit drop; never in the checkpoint, a deep copy or a pickle; the frozen stage-2 body's plan
kept across steps that do not touch it."""

import copy
import pickle

import pytest
import torch
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, every_query_outputs, make_input, tiny_cfg

from detr_panoptic_d2.engine import build_detr_optimizer
from detr_panoptic_d2.modeling.inference_plan import plans_of

BATCH = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]


def _model(**overrides):
    opts = {"MODEL.BACKBONE.NAME": "build_detr_resnet_backbone", "MODEL.RESNETS.NORM": "BN"}
    return build_tiny_model(mask_head=True, **{**opts, **overrides}).eval()


def _outputs(model):
    """Logits and every query's mask logits, through the model's plan."""
    outputs, masks = every_query_outputs(model, BATCH, planned=True)
    return outputs["pred_logits"], masks


def _reference(model):
    """The same from the modules themselves (no plan): autograd on, float32."""
    outputs, masks = every_query_outputs(model, BATCH, planned=False)
    return outputs["pred_logits"], masks


def _assert_current(model):
    """The plan's outputs are the current weights' (folding: float32 rounding)."""
    got, ref = _outputs(model), _reference(model)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    return got


def _scale_weights_(model, factor):
    with torch.no_grad():
        model.detr.backbone.res2[0].conv1.weight.mul_(factor)
        model.mask_head.mask_head.lay1.weight.mul_(factor)


def test_plan_is_made_once_and_reused():
    model = _model()
    assert not plans_of(model)
    model(BATCH)
    plan = plans_of(model)["inference"]
    model(BATCH)
    assert plans_of(model)["inference"] is plan
    assert model.prepare_inference() is plan


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_optimizer_step_drops_the_plan(mode):
    """An optimizer step on the model's parameters, also while it is in eval mode (a user's loop
    that never calls train()), gives the next inference the new weights."""
    model = _model()
    opt = build_detr_optimizer(tiny_cfg(), model)
    before = _assert_current(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 0.01
    if mode == "train":
        model.train()
    opt.step()
    if mode == "train":
        model.eval()
    after = _assert_current(model)
    assert not torch.allclose(before[1], after[1])


def test_training_forward_and_load_state_dict_drop_the_plan():
    model = _model()
    first = _assert_current(model)
    model.train()
    with EventStorage():
        model(BATCH)  # BatchNorm running statistics move
    model.eval()
    second = _assert_current(model)
    assert not torch.allclose(first[0], second[0])
    fresh = _model()
    model.load_state_dict(fresh.state_dict())  # in eval mode: no train() in between
    torch.testing.assert_close(_assert_current(model)[1], _assert_current(fresh)[1])


def test_load_into_a_part_drops_the_plan():
    model, other = _model(), _model(**{"MODEL.DETR.NUM_OBJECT_QUERIES": 10})
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    _assert_current(model)
    model.detr.load_state_dict(other.detr.state_dict())
    assert not plans_of(model)
    _assert_current(model)
    model.mask_head.load_state_dict(other.mask_head.state_dict())
    assert not plans_of(model)
    torch.testing.assert_close(_assert_current(model)[1], _assert_current(other)[1])


def test_to_and_explicit_drop():
    model = _model()
    _assert_current(model)
    model.to(torch.float64).to(torch.float32)
    assert not plans_of(model)
    _assert_current(model)
    _scale_weights_(model, 1.5)  # in place, by no channel the model sees: the stale plan stays
    stale = _outputs(model)
    model.drop_inference_plans()
    fresh = _assert_current(model)
    assert not torch.allclose(stale[1], fresh[1])


def test_plans_are_not_in_the_checkpoint_a_copy_or_a_pickle():
    model = _model(**{"MODEL.DETR.TEST.PRECISION": "bf16"})
    keys = set(model.state_dict())
    model(BATCH)
    assert plans_of(model)["inference"].body_params is not None  # a bf16 copy exists
    assert set(model.state_dict()) == keys
    assert all(v.dtype != torch.bfloat16 for v in model.state_dict().values())
    clone = copy.deepcopy(model)
    assert not plans_of(clone)
    unpickled = pickle.loads(pickle.dumps(model))
    assert not plans_of(unpickled)
    # the copies' own loads drop their own plans, not the original's
    clone(BATCH)
    clone.load_state_dict(model.state_dict())
    assert not plans_of(clone) and plans_of(model)


def test_frozen_body_plan_survives_steps_that_do_not_touch_it(tmp_path):
    """Stage 2: the frozen body runs folded; the optimizer holds only the mask head, so its steps
    keep the body's plan (not re-folded each iteration), and train() drops it."""
    stage1 = _model()
    path = str(tmp_path / "stage1.pth")
    torch.save({"model": stage1.state_dict()}, path)
    model = build_tiny_model(
        mask_head=True,
        **{
            "MODEL.BACKBONE.NAME": "build_detr_resnet_backbone",
            "MODEL.RESNETS.NORM": "BN",
            "MODEL.DETR.FROZEN_WEIGHTS": path,
        },
    ).train()
    opt = build_detr_optimizer(tiny_cfg(), model)
    train_batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    plans = []
    for _ in range(2):
        with EventStorage():
            losses = model(train_batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        plans.append(plans_of(model)["frozen body"])
    assert plans[0] is plans[1]
    model.train()
    assert "frozen body" not in plans_of(model)
