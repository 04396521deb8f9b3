"""SOLVER.BACKBONE_MULTIPLIER on the real model: every trainable parameter of ``detr.backbone`` at
BASE_LR x the multiplier, every other trainable one at BASE_LR, frozen ones absent; for the toy and
the COCO R-50 configs, through build_detr_optimizer, the trainer's optimizer (and its scheduler's
initial learning rates), and a DistributedDataParallel-wrapped model."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tiny_toy import REPO

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.engine import DetrPanopticTrainer, build_detr_optimizer

R50_STAGE1 = os.path.join(REPO, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage1.yaml")
BASE_LR, MULTIPLIER = 1e-4, 0.1


def _r50_cfg():
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(R50_STAGE1)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(["SOLVER.BASE_LR", str(BASE_LR)])
    cfg.merge_from_list(["SOLVER.BACKBONE_MULTIPLIER", str(MULTIPLIER)])
    return cfg


def _toy_cfg(tiny, tmp_path):
    return tiny(
        tmp_path,
        extra=["SOLVER.BASE_LR", BASE_LR, "SOLVER.BACKBONE_MULTIPLIER", MULTIPLIER],
    )


def _expected_lr(model):
    """{parameter name: expected lr or None (frozen: not in the optimizer)}."""
    return {
        n: None
        if not p.requires_grad
        else BASE_LR * (MULTIPLIER if n.startswith("detr.backbone.") else 1.0)
        for n, p in model.named_parameters()
    }


def _check(optimizer, model, key="lr", frozen=False):
    lr_of = {id(p): g[key] for g in optimizer.param_groups for p in g["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(lr_of)  # each once
    expected = _expected_lr(model)
    # R-50 (FREEZE_AT 2): the stem and res2 are frozen; the toy model trains it all
    assert any(v is None for v in expected.values()) == frozen
    assert any(n.startswith("detr.backbone.") and v for n, v in expected.items())
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert id(p) not in lr_of, name
        else:
            assert lr_of[id(p)] == pytest.approx(expected[name], rel=1e-12), name
    assert len(lr_of) == sum(v is not None for v in expected.values())


def test_every_parameter_lr_of_the_coco_r50_model():
    torch.manual_seed(0)
    model = build_model(_r50_cfg())
    _check(build_detr_optimizer(_r50_cfg(), model), model, frozen=True)


def test_every_parameter_lr_of_the_toy_model_and_the_trainer_optimizer(tiny, tmp_path):
    cfg = _toy_cfg(tiny, tmp_path)
    model = build_model(cfg)
    _check(build_detr_optimizer(cfg, model), model)
    _check(DetrPanopticTrainer.build_optimizer(cfg, model), model)
    trainer = DetrPanopticTrainer(cfg)  # the optimizer the trainer and its lr scheduler use
    _check(trainer.optimizer, trainer.model)
    _check(trainer.optimizer, trainer.model, key="initial_lr")


def test_a_ddp_wrapped_model_gets_the_same_groups(tiny, tmp_path):
    cfg = _toy_cfg(tiny, tmp_path)
    model = build_model(cfg)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        assert next(n for n, _ in wrapped.named_parameters()).startswith("module.detr.")
        _check(build_detr_optimizer(cfg, wrapped), model)
    finally:
        torch.distributed.destroy_process_group()
