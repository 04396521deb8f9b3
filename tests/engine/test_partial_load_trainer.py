"""Partial loads in training: the trainer's log lists what starts from scratch, grouped by module,
and the evaluations that follow training (periodic, end of training) run; evaluating the same
partial load without training is an error naming the missing modules and the file."""

import logging

import pytest
import torch
from detectron2.modeling import build_model

from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.checkpoint.loading import UninitializedParametersError
from detr_panoptic_d2.engine import DetrPanopticTrainer


def _stage1_file(tiny, tmp_path):
    """A stage-1 checkpoint of the tiny toy model (random weights: no training needed)."""
    torch.manual_seed(0)
    model = build_model(tiny(tmp_path / "s1"))
    path = tmp_path / "s1" / "model_final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path


def test_stage2_from_a_stage1_checkpoint_trains_evaluates_and_logs_the_scratch_part(
    tiny, tmp_path, caplog
):
    s1 = _stage1_file(tiny, tmp_path)
    # MODEL.WEIGHTS: the whole stage-1 checkpoint (the mask head from scratch), periodic and
    # end-of-training evaluation (EVAL_PERIOD 1 with 2 iterations)
    extra = ["MODEL.DETR.FROZEN_WEIGHTS", s1, "MODEL.WEIGHTS", s1, "TEST.EVAL_PERIOD", "1"]
    cfg = tiny(tmp_path / "s2", stage=2, max_iter=2, extra=extra)
    trainer = DetrPanopticTrainer(cfg)
    num_head = sum(1 for k in trainer.model.state_dict() if k.startswith("mask_head."))
    with caplog.at_level(logging.INFO, logger="detr_panoptic_d2"):
        trainer.resume_or_load(resume=False)
    assert f"Initialized from scratch (not in {s1}): mask_head.* ({num_head} tensors)" in (
        caplog.text
    )
    trainer.train()  # evaluates after iterations 0 and 1
    results = trainer._last_eval_results
    assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0

    # the same checkpoint evaluated without training: refused, naming the mask head and the file
    model = build_model(cfg).eval()
    with pytest.raises(UninitializedParametersError) as e:
        DetrCheckpointer(model).load(str(s1))
    assert f"mask_head.* ({num_head} tensors) missing from {s1}" in str(e.value)


def test_stage2_body_from_frozen_weights_head_from_scratch_end_of_training_eval(tiny, tmp_path):
    s1 = _stage1_file(tiny, tmp_path)
    cfg = tiny(
        tmp_path / "s2",
        stage=2,
        max_iter=1,
        extra=["MODEL.DETR.FROZEN_WEIGHTS", s1, "TEST.EVAL_PERIOD", "1"],
    )
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS "": nothing more loaded
    assert trainer.model._uninitialized  # the mask head: from scratch until it trains
    trainer.train()
    assert not trainer.model._uninitialized
    assert "panoptic_seg" in trainer._last_eval_results
