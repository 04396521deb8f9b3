"""A training run that fits a wall-clock budget (``SOLVER.TIME_BUDGET_MINUTES``).

The schedule (``SOLVER.MAX_ITER``, ``SOLVER.STEPS``, warmup) is what a run does on a machine fast
enough for it. On a slower one, :class:`TimeBudget` measures the seconds per iteration (early in
training, then every hundred iterations) and, if the rest of the schedule would not fit the budget,
scales the whole schedule to the iterations that fit: ``max_iter`` and every lr milestone by
the same factor (Detectron2's ``LRMultiplier`` reads its schedule as a fraction of ``max_iter``),
the final checkpoint and the end-of-training evaluation at the new end. A fast machine runs the
configured schedule unchanged.

Every process takes the same decision (the slowest speed, the longest time spent), so that all end
at the same iteration. A checkpoint keeps the fitted end and the training time spent (Detectron2
saves the ``state_dict`` of every hook), so that ``--resume`` continues the schedule of the run it
resumes, within what is left of its budget.
"""

import logging
import time

from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage

logger = logging.getLogger(__name__)


class TimeBudget(HookBase):
    """Scale the schedule so that the training loop ends within ``budget_s`` seconds.

    Seconds per iteration are measured over iterations ``first`` to ``last`` (counted from the
    run's first iteration; the first ones, slower, are left out), then again over every ``period``
    iterations after that, so that a machine whose speed changes is followed. At each measurement
    the end becomes the iterations that fit in the time left at the last window's speed, never
    more than the configured ``MAX_ITER``. Until the first lr drop (``first_drop``: its place as a
    fraction of ``max_iter``, ``SOLVER.STEPS[0] / SOLVER.MAX_ITER``) the end may move both ways, so
    a passing slowdown is made up for; after it, the end only moves earlier, so an lr drop already
    passed is never undone. Every process takes the slowest measurement and the longest time
    spent (the processes do not start at the same instant), so all agree on the end.
    The budget counts the training loop only (from the first iteration), not building the model or
    the evaluation after it; a resumed run counts the training time of the run it resumes too, and
    ends where that run's schedule had been fitted to end (``state_dict``, saved in checkpoints).
    """

    def __init__(self, budget_s, first_drop=None, first=20, last=60, period=100):
        if budget_s <= 0:
            raise ValueError(f"SOLVER.TIME_BUDGET_MINUTES must be > 0, got {budget_s / 60}")
        self.budget_s = budget_s
        self.first_drop = first_drop
        self.first, self.last, self.period = first, last, period
        self.fitted_max_iter = None  # set when the schedule was rescaled
        self.clock = time.perf_counter
        self._spent_before = 0.0  # training seconds of the runs this one resumes
        self._start = None

    def before_train(self):
        self._start = self.clock()
        self._mark = None  # (iterations done, time) at the start of the current window
        self._planned = self.trainer.max_iter
        if self.fitted_max_iter is not None and self.fitted_max_iter != self.trainer.max_iter:
            # resumed from a checkpoint of a run whose schedule was fitted: continue that schedule
            logger.info(
                f"Time budget: resuming a run fitted to {self.fitted_max_iter} of the configured "
                f"{self._planned} iterations after {self._spent_before:.1f} s of training"
            )
            self.set_max_iter(self.fitted_max_iter)

    def spent_s(self):
        """Seconds of training so far, those of the runs this one resumes included."""
        running = 0.0 if self._start is None else self.clock() - self._start
        return self._spent_before + running

    def state_dict(self):
        """The fitted end (None: the configured one) and the training seconds spent, which a
        checkpoint keeps."""
        return {"fitted_max_iter": self.fitted_max_iter, "spent_s": float(self.spent_s())}

    def load_state_dict(self, state):
        """Continue the run a checkpoint was taken of: its end, the time it spent."""
        self.fitted_max_iter = state.get("fitted_max_iter")
        self._spent_before = float(state.get("spent_s", 0.0))

    def after_step(self):
        trainer = self.trainer
        done = trainer.iter + 1 - trainer.start_iter  # iterations run so far
        if done == self.first:
            self._mark = (done, self.clock())
        if self._mark is None or done < self.last or (done - self.last) % self.period:
            return
        now = self.clock()
        speed = (now - self._mark[1]) / (done - self._mark[0])
        spent = self._spent_before + now - self._start
        # one decision for all: the slowest window and the earliest start, so that every process
        # computes the same end (different ends would leave the others waiting in a collective)
        per_iter, spent = (max(v) for v in zip(*comm.all_gather((speed, spent))))
        self._mark = (done, now)
        left = self.budget_s - spent
        fit = min(self._planned, trainer.iter + 1 + max(0, int(left / per_iter)))
        current = trainer.max_iter
        if self.first_drop is not None and trainer.iter + 1 >= self.first_drop * current:
            fit = min(fit, current)  # past the first lr drop: only earlier
        if fit == current:
            if done == self.last:
                logger.info(
                    f"Time budget {self.budget_s / 60:.1f} min: {per_iter:.3f} s/iter, the "
                    f"{current} iterations fit"
                )
            return
        logger.warning(
            f"Time budget {self.budget_s / 60:.1f} min: {per_iter:.3f} s/iter at iteration "
            f"{trainer.iter}, so the schedule is scaled from {current} to {fit} iterations "
            f"({fit / self._planned:.2f} of the configured {self._planned}, lr milestones alike)"
        )
        self.set_max_iter(fit)

    def set_max_iter(self, max_iter):
        """End the run at ``max_iter``: the loop, the lr schedule, the final checkpoint, the ETA."""
        trainer = self.trainer
        trainer.max_iter = max_iter
        scheduler = getattr(trainer, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "_max_iter"):  # LRMultiplier
            scheduler._max_iter = max_iter
        for h in trainer._hooks:
            if isinstance(h, d2_hooks.LRScheduler) and hasattr(h.scheduler, "_max_iter"):
                h.scheduler._max_iter = max_iter  # LazyConfig: the hook's own LRMultiplier
            if isinstance(h, d2_hooks.PeriodicCheckpointer):
                h.max_iter = max_iter
            if isinstance(h, d2_hooks.PeriodicWriter):
                for w in h._writers:
                    if isinstance(w, CommonMetricPrinter):
                        w._max_iter = max_iter
        self.fitted_max_iter = max_iter
        trainer.storage.put_scalar("time_budget_max_iter", max_iter, smoothing_hint=False)


def run_training_loop(trainer, start_iter):
    """``TrainerBase.train``'s loop, ending at ``trainer.max_iter`` as it is after each step (a
    :class:`TimeBudget` may move it); the hooks see what they see in Detectron2's loop."""
    logger.info(f"Starting training from iteration {start_iter}")
    trainer.iter = trainer.start_iter = start_iter
    with EventStorage(start_iter) as trainer.storage:
        try:
            trainer.before_train()
            while trainer.iter < trainer.max_iter:
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                trainer.iter += 1
        except Exception:
            logger.exception("Exception during training:")
            raise
        finally:
            trainer.after_train()
