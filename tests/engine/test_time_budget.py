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


# ---- several processes ---------------------------------------------------------------------------
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU/gloo launch test: with a GPU, launch() uses NCCL"
)
def test_ranks_that_start_apart_end_at_the_same_iteration(tmp_path):
    from datetime import timedelta

    from _dist_main import budget_main  # tests/engine is on sys.path under pytest
    from detectron2.engine import launch

    # 0.5 s per iteration on both; rank 1 started its loop 4 s after rank 0. At the measurement
    # (iteration 4, 7 s on the clock) rank 0 has spent 7 s of the 10 s budget, rank 1 only 3 s:
    # alone, rank 0 would end at 4 + 3 / 0.5 = 10, rank 1 at 4 + 7 / 0.5 = 18 (and wait forever
    # in the collective of iteration 10). Both count from the earlier start: 10.
    launch(
        budget_main,
        2,
        dist_url="auto",
        args=(str(tmp_path), (0.0, 4.0), 10.0, 40),
        timeout=timedelta(seconds=60),
    )
    ends = [json.loads((tmp_path / f"budget_{r}.json").read_text()) for r in range(2)]
    assert ends == [{"iter": 10, "fitted_max_iter": 10}] * 2


# ---- resume --------------------------------------------------------------------------------------
def _resumable(tiny, out, clock_step, resume=False):
    """80 iterations planned, lr drop at 40, a checkpoint every 8 iterations, a 12 s budget; a fake
    clock advancing ``clock_step`` s per reading; measured over iterations 2-4 of the run."""
    cfg = tiny(
        out,
        max_iter=80,
        extra=[
            "SOLVER.TIME_BUDGET_MINUTES",
            12 / 60,
            "SOLVER.STEPS",
            "(40,)",
            "SOLVER.BASE_LR",
            BASE_LR,
            "SOLVER.CHECKPOINT_PERIOD",
            8,
            "MODEL.DETR.DN.COPIES",
            0,
        ],
    )
    trainer = DetrPanopticTrainer(cfg)
    (budget,) = [h for h in trainer._hooks if isinstance(h, TimeBudget)]
    budget.first, budget.last, budget.period = 2, 4, 1000
    ticks = iter(range(1000))
    budget.clock = lambda: clock_step * next(ticks)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    lrs = {it: lr for lr, it in trainer.storage.history("lr").values()}
    return trainer, budget, lrs


def _interrupt_after(out, iteration):
    """Leave ``out`` as a run stopped after the checkpoint of ``iteration`` leaves it."""
    for f in out.glob("model_*.pth"):
        if f.name != f"model_{iteration:07d}.pth":
            f.unlink()
    (out / "last_checkpoint").write_text(f"model_{iteration:07d}.pth")


@pytest.mark.slow
def test_resume_continues_the_fitted_schedule(tiny, tmp_path):
    # clock 0 at the start, 1 at iteration 2, 2 at iteration 4: 0.5 s/iter, 10 s left: 4 + 20 = 24
    # iterations of the 80 (the lr drop at 12); the checkpoint of iteration 7 reads 3 s spent
    whole, budget, whole_lrs = _resumable(tiny, tmp_path / "whole", 1.0)
    assert budget.fitted_max_iter == 24 and whole.iter == 24
    out = tmp_path / "resumed"
    _resumable(tiny, out, 1.0)
    _interrupt_after(out, 7)
    saved = torch.load(out / "model_0000007.pth", weights_only=False)
    assert saved["trainer"]["hooks"]["TimeBudget"] == {"fitted_max_iter": 24, "spent_s": 3.0}

    # the resumed run: 3 s spent, then 0.5 s/iter again (2 s at its iteration 4, iteration 11):
    # 7 s left would fit 26, past the lr drop the end stays at 24
    resumed, budget, lrs = _resumable(tiny, out, 1.0, resume=True)
    assert resumed.start_iter == 8
    assert resumed.iter == 24 and budget.fitted_max_iter == 24
    assert resumed.scheduler._max_iter == 24
    assert sorted(lrs) == list(range(8, 24))
    assert lrs == {it: whole_lrs[it] for it in range(8, 24)}  # exactly the uninterrupted run's
    assert lrs[11] == BASE_LR and lrs[12] == pytest.approx(BASE_LR * 0.1)
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 23
    # 3 s before, then the clock's fifth reading of this run (start, two measurements, the
    # checkpoints of iterations 15 and 23, then model_final)
    assert final["trainer"]["hooks"]["TimeBudget"]["spent_s"] == 3.0 + 5.0


@pytest.mark.slow
def test_resume_counts_the_time_already_spent(tiny, tmp_path):
    _resumable(tiny, tmp_path, 1.0)
    _interrupt_after(tmp_path, 7)
    # the resumed machine is slower: 1.5 s per reading, 0.75 s/iter over iterations 9-11. With the
    # 3 s spent before, 12 - 3 - 3 = 6 s are left: 12 + 8 = 20 iterations (ignoring them, 9 s left
    # would keep 24)
    resumed, budget, _ = _resumable(tiny, tmp_path, 1.5, resume=True)
    assert budget.fitted_max_iter == 20 and resumed.iter == 20
