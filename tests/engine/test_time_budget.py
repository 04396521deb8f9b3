"""SOLVER.TIME_BUDGET_MINUTES: a run too slow for its schedule gets the schedule scaled down."""

import json

import pytest
import torch

from detr_panoptic_d2.engine import DetrPanopticTrainer
from detr_panoptic_d2.engine.time_budget import TimeBudget

BASE_LR = 1e-3


def _train(tiny, out, budget_minutes, max_iter, steps, clock=None):
    cfg = tiny(
        out,
        max_iter=max_iter,
        extra=[
            "SOLVER.TIME_BUDGET_MINUTES",
            budget_minutes,
            "SOLVER.STEPS",
            steps,
            "SOLVER.BASE_LR",
            BASE_LR,
            "MODEL.DETR.DN.COPIES",
            0,
        ],
    )
    trainer = DetrPanopticTrainer(cfg)
    (budget,) = [h for h in trainer._hooks if isinstance(h, TimeBudget)]
    budget.first, budget.last, budget.period = 2, 4, 1000  # the tiny model runs in milliseconds
    if clock is not None:
        budget.clock = clock
    trainer.resume_or_load(resume=False)
    trainer.train()
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    return trainer, budget, [m for m in metrics if "lr" in m]


def test_budget_too_small_scales_the_schedule_and_saves_the_final_model(tiny, tmp_path):
    # a clock that advances 1 s per reading: start 0, iteration 2 at 1 s, iteration 4 at 2 s, so
    # 0.5 s per iteration; a 5 s budget leaves 3 s = 6 more iterations: 10 of the 40 planned
    ticks = iter(range(1000))
    trainer, budget, metrics = _train(
        tiny, tmp_path, 5 / 60, max_iter=40, steps="(20,)", clock=lambda: next(ticks)
    )
    assert budget.fitted_max_iter == 10 and trainer.max_iter == 10
    assert trainer.iter == 10  # as Detectron2's loop leaves it after the last iteration
    assert trainer.scheduler._max_iter == 10
    # the milestone at 20 of 40 iterations is now at 5 of 10: the last iteration ran at the
    # dropped lr (in the configured schedule, iteration 9 would be at the base lr)
    lrs = {m["iteration"]: m["lr"] for m in metrics}
    assert max(lrs) == 9
    assert lrs[9] == pytest.approx(BASE_LR * 0.1)
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    state = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert state["iteration"] == 9


def test_budget_spent_ends_the_run_after_the_measurement(tiny, tmp_path):
    trainer, budget, _ = _train(tiny, tmp_path, 1e-6, max_iter=40, steps="(20,)")
    assert budget.fitted_max_iter == 4 and trainer.iter == 4
    assert (tmp_path / "model_final.pth").is_file()


def test_budget_large_enough_keeps_the_schedule(tiny, tmp_path):
    trainer, budget, metrics = _train(tiny, tmp_path, 60.0, max_iter=8, steps="(6,)")
    assert budget.fitted_max_iter is None
    assert trainer.max_iter == 8 and trainer.iter == 8
    assert trainer.scheduler._max_iter == 8
    lrs = {m["iteration"]: m["lr"] for m in metrics}
    assert max(lrs) == 7
    assert lrs[7] == pytest.approx(BASE_LR * 0.1)
    assert (tmp_path / "model_final.pth").is_file()


def test_budget_rechecked_when_the_machine_slows_down(tiny, tmp_path):
    # 0.1 s per iteration until iteration 10, then 1 s: the first measurements fit all 30
    # iterations in a 10 s budget, a later one (windows of 8 iterations) does not
    cfg = tiny(
        tmp_path,
        max_iter=30,
        extra=["SOLVER.TIME_BUDGET_MINUTES", 10 / 60, "MODEL.DETR.DN.COPIES", 0],
    )
    trainer = DetrPanopticTrainer(cfg)
    (budget,) = [h for h in trainer._hooks if isinstance(h, TimeBudget)]
    budget.first, budget.last, budget.period = 2, 4, 8
    budget.clock = lambda: sum(0.1 if i < 10 else 1.0 for i in range(trainer.iter + 1))
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the clock reads the end of the current iteration: 0.1 s at the start (iteration 0).
    # done 4: 0.1 s/iter, 9.7 s left, fits; done 12: (3.0 - 0.4) / 8 = 0.325 s/iter, 7.1 s left,
    # 12 + 21 = 33 >= 30 still fits; done 20: (11.0 - 3.0) / 8 = 1 s/iter, budget spent: end at 20
    assert budget.fitted_max_iter == 20
    assert trainer.iter == 20 and trainer.scheduler._max_iter == 20
    assert (tmp_path / "model_final.pth").is_file()


def _slow_then_fast(tiny, tmp_path, steps):
    """1 s per iteration until iteration 8, then 0.1 s; a 12 s budget, 40 iterations planned;
    measured over iterations 2-4, then every 4."""
    cfg = tiny(
        tmp_path,
        max_iter=40,
        extra=[
            "SOLVER.TIME_BUDGET_MINUTES",
            12 / 60,
            "SOLVER.STEPS",
            steps,
            "MODEL.DETR.DN.COPIES",
            0,
        ],
    )
    trainer = DetrPanopticTrainer(cfg)
    (budget,) = [h for h in trainer._hooks if isinstance(h, TimeBudget)]
    budget.first, budget.last, budget.period = 2, 4, 4
    budget.clock = lambda: sum(1.0 if i < 8 else 0.1 for i in range(trainer.iter + 1))
    ends = []
    set_max_iter = budget.set_max_iter
    budget.set_max_iter = lambda n: (ends.append(n), set_max_iter(n))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, ends


def test_budget_grows_back_before_the_first_lr_drop(tiny, tmp_path):
    # done 4: 1 s/iter, 9 s left: end 13. done 12: 0.1 s/iter, 4.6 s left: 58, capped at the
    # configured 40; the drop (39 of 40: at 12.7 of 13) is still ahead, so the end moves back
    trainer, ends = _slow_then_fast(tiny, tmp_path, "(39,)")
    assert ends == [13, 40]
    assert trainer.iter == 40 and trainer.scheduler._max_iter == 40


def test_budget_never_grows_after_the_first_lr_drop(tiny, tmp_path):
    # the same, but the drop (30 of 40: at 9.75 of 13) is behind at done 12: the end stays 13
    trainer, ends = _slow_then_fast(tiny, tmp_path, "(30,)")
    assert ends == [13]
    assert trainer.iter == 13 and trainer.scheduler._max_iter == 13
    assert (tmp_path / "model_final.pth").is_file()


def test_budget_off_is_detectron2s_loop(tiny, tmp_path):
    cfg = tiny(tmp_path, max_iter=2, extra=["SOLVER.TIME_BUDGET_MINUTES", 0.0])
    trainer = DetrPanopticTrainer(cfg)
    assert not any(isinstance(h, TimeBudget) for h in trainer._hooks)


def test_negative_budget_is_a_config_error(tiny, tmp_path):
    from detectron2.modeling import build_model

    cfg = tiny(tmp_path, extra=["SOLVER.TIME_BUDGET_MINUTES", -1.0])
    with pytest.raises(ValueError, match="SOLVER.TIME_BUDGET_MINUTES"):
        build_model(cfg)
