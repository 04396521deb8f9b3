"""build_detr_optimizer: parameter groups, optimizer choice, full-model gradient clipping."""

import copy

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.engine import build_detr_optimizer


class TinyDetr(nn.Module):
    """Parameter names like the real model: ``backbone.*`` and the rest."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self.backbone[0].bias.requires_grad_(False)  # a frozen backbone parameter


def make_cfg(**overrides):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def _ids(params):
    return {id(p) for p in params}


def test_adamw_groups_and_learning_rates():
    model = TinyDetr()
    opt = build_detr_optimizer(make_cfg(), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    rest, backbone = opt.param_groups[0], opt.param_groups[1]
    assert rest["lr"] == pytest.approx(1e-3)
    assert backbone["lr"] == pytest.approx(1e-3 * 0.1)
    # only trainable parameters, each in the right group
    assert _ids(backbone["params"]) == _ids(
        [model.backbone[0].weight, model.backbone[1].weight, model.backbone[1].bias]
    )
    assert _ids(rest["params"]) == _ids(model.head.parameters())
    everything = _ids(backbone["params"]) | _ids(rest["params"])
    assert id(model.backbone[0].bias) not in everything
    assert not everything & _ids(model.frozen.parameters())
    for g in opt.param_groups:
        assert g["weight_decay"] == pytest.approx(1e-4)
        # the LR scheduler scales from "initial_lr"/base lr of each group: the group's own lr
        assert all(p.requires_grad for p in g["params"])


def test_no_backbone_gives_one_group():
    model = nn.Sequential(nn.Linear(2, 2))
    opt = build_detr_optimizer(make_cfg(), model)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_sgd_option_and_unknown_optimizer():
    opt = build_detr_optimizer(
        make_cfg(**{"SOLVER.OPTIMIZER": "SGD", "SOLVER.MOMENTUM": 0.5}), TinyDetr()
    )
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.5 for g in opt.param_groups)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_detr_optimizer(make_cfg(**{"SOLVER.OPTIMIZER": "LAMB"}), TinyDetr())


def test_clip_type_other_than_full_model_is_rejected():
    for clip_type in ("value", "norm"):
        with pytest.raises(ValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE") as e:
            build_detr_optimizer(
                make_cfg(**{"SOLVER.CLIP_GRADIENTS.CLIP_TYPE": clip_type}), TinyDetr()
            )
        assert "full_model" in str(e.value)


def test_clipping_disabled_is_plain_optimizer():
    opt = build_detr_optimizer(make_cfg(**{"SOLVER.CLIP_GRADIENTS.ENABLED": False}), TinyDetr())
    assert type(opt) is torch.optim.AdamW


def _set_grads(model, scale):
    """Deterministic gradients: each parameter's norm is below max_norm, their total is far above
    it."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g) * scale


def test_full_model_clipping_sgd_update_is_lr_times_globally_clipped_grad():
    max_norm = 0.1
    cfg = make_cfg(
        **{
            "SOLVER.OPTIMIZER": "SGD",
            "SOLVER.MOMENTUM": 0.0,
            "SOLVER.WEIGHT_DECAY": 0.0,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": max_norm,
        }
    )
    model = TinyDetr()
    opt = build_detr_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    _set_grads(model, 0.02)
    per_param = [p.grad.norm().item() for p in params]
    total = torch.norm(torch.stack([p.grad.norm() for p in params])).item()
    assert max(per_param) < max_norm < total  # per-parameter clipping would change nothing
    grads = {id(p): p.grad.clone() for p in params}
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    before = {id(p): p.detach().clone() for p in params}
    frozen_before = [p.detach().clone() for p in model.frozen.parameters()]

    opt.step()

    coef = max_norm / (total + 1e-6)
    for p in params:
        expected = before[id(p)] - lrs[id(p)] * coef * grads[id(p)]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)
    # the grads themselves were clipped in place to the global norm
    assert torch.norm(torch.stack([p.grad.norm() for p in params])).item() == pytest.approx(
        max_norm, rel=1e-4
    )
    for p, b in zip(model.frozen.parameters(), frozen_before):
        assert torch.equal(p, b)


def test_full_model_clipping_no_change_below_max_norm():
    cfg = make_cfg(
        **{
            "SOLVER.OPTIMIZER": "SGD",
            "SOLVER.MOMENTUM": 0.0,
            "SOLVER.WEIGHT_DECAY": 0.0,
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 100.0,
        }
    )
    model = TinyDetr()
    opt = build_detr_optimizer(cfg, model)
    _set_grads(model, 0.05)
    params = [p for g in opt.param_groups for p in g["params"]]
    grads = [p.grad.clone() for p in params]
    opt.step()
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)


def test_full_model_clipping_adamw_matches_reference_on_clipped_grads():
    """Two AdamW steps with clipping equal plain AdamW fed the globally rescaled gradients."""
    max_norm = 0.1
    cfg = make_cfg(**{"SOLVER.CLIP_GRADIENTS.CLIP_VALUE": max_norm})
    model = TinyDetr()
    ref_model = copy.deepcopy(model)
    opt = build_detr_optimizer(cfg, model)
    ref_params = dict(ref_model.named_parameters())
    ref_groups = []
    name_of = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        ref_groups.append(
            {"params": [ref_params[name_of[id(p)]] for p in g["params"]], "lr": g["lr"]}
        )
    ref_opt = torch.optim.AdamW(
        ref_groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )
    for step, scale in enumerate((0.05, 0.3)):
        _set_grads(model, scale * (step + 1))
        params = [p for g in opt.param_groups for p in g["params"]]
        total = torch.norm(torch.stack([p.grad.norm() for p in params])).item()
        coef = min(1.0, max_norm / (total + 1e-6))
        for n, p in model.named_parameters():
            if p.grad is not None:
                ref_params[n].grad = p.grad.clone() * coef
        opt.step()
        ref_opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref_params[n].detach(), rtol=1e-5, atol=1e-7)
    state = opt.state_dict()["state"]
    ref_state = ref_opt.state_dict()["state"]
    for k in state:
        torch.testing.assert_close(state[k]["exp_avg"], ref_state[k]["exp_avg"])
