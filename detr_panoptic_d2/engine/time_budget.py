"""A training run that fits a wall-clock budget (``SOLVER.TIME_BUDGET_MINUTES``).

The schedule (``SOLVER.MAX_ITER``, ``SOLVER.STEPS``, warmup) is what a run does on a machine fast
enough for it. On a slower one, :class:`TimeBudget` measures the seconds per iteration (early in
training, then every hundred iterations) and, if the rest of the schedule would not fit the budget,
scales the whole schedule to the iterations that fit: ``max_iter`` and every lr milestone by
the same factor (:class:`ScalableLRMultiplier` reads its schedule as a fraction of ``max_iter``),
the final checkpoint and the end-of-training evaluation at the new end. A fast machine runs the
configured schedule unchanged.

The loop is Detectron2's (``TrainerBase.train`` over the configured iterations); the hook ends it
at the fitted end by raising :class:`StopTraining` before the first iteration past it, which
:class:`StoppableLoop` and :func:`run_training_loop` catch. Detectron2's ``EvalHook`` and
``PeriodicWriter`` read the end from ``trainer.max_iter``, as does :class:`EndFollowingPrinter`;
the lr schedule and the checkpointers are told it (the hook's ``followers``).

Every process takes the same decision (the slowest speed, the longest time spent), so that all end
at the same iteration. A checkpoint keeps the fitted end and the training time spent (Detectron2
saves the ``state_dict`` of every hook), so that ``--resume`` continues the schedule of the run it
resumes, within what is left of its budget.
"""

import contextlib
import logging
import time
import weakref

from detectron2.engine import HookBase, TrainerBase
from detectron2.solver import LRScheduler
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventWriter
from fvcore.common.param_scheduler import ParamScheduler

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """Ends Detectron2's training loop before the iteration it is raised in, as the end of the
    loop's range would: the loop's ``finally`` runs ``after_train`` with ``trainer.iter`` at that
    iteration. A ``BaseException`` (as ``GeneratorExit``), so that the loop's ``except Exception``,
    which logs a failed run, lets it through."""


class StoppableLoop(TrainerBase):
    """``TrainerBase`` whose ``train(start_iter, max_iter)``, Detectron2's loop, a hook may end
    early with :class:`StopTraining`. A base class after ``DefaultTrainer``
    (``class Trainer(DefaultTrainer, StoppableLoop)``): ``DefaultTrainer.train`` reaches it through
    ``super().train(start_iter, max_iter)``."""

    def train(self, start_iter, max_iter):
        with contextlib.suppress(StopTraining):
            super().train(start_iter, max_iter)


def run_training_loop(trainer, start_iter, max_iter=None):
    """Detectron2's loop, ``trainer.train(start_iter, max_iter)`` (``max_iter``: the trainer's own
    where not given), which a :class:`TimeBudget` may end before ``max_iter``."""
    with contextlib.suppress(StopTraining):
        trainer.train(start_iter, trainer.max_iter if max_iter is None else max_iter)


class ScalableLRMultiplier(LRScheduler):
    """Detectron2's ``LRMultiplier`` with a settable ``max_iter``: each lr is its base lr times a
    fvcore ``ParamScheduler`` of the fraction of training done, ``iteration / max_iter``, so that
    the whole schedule (warmup, milestones) stretches or shrinks to a new ``max_iter``. Its
    ``state_dict`` is LRMultiplier's (base lrs, iteration)."""

    def __init__(self, optimizer, multiplier, max_iter, last_iter=-1):
        if not isinstance(multiplier, ParamScheduler):
            raise ValueError(
                f"ScalableLRMultiplier(multiplier=) must be an fvcore ParamScheduler, got "
                f"{multiplier!r}"
            )
        self.multiplier = multiplier
        self._max_iter = max_iter  # LRMultiplier's name for it, which code reading either reads
        super().__init__(optimizer, last_epoch=last_iter)

    @property
    def max_iter(self):
        """The iteration the schedule ends at (its fraction 1)."""
        return self._max_iter

    @max_iter.setter
    def max_iter(self, max_iter):
        self._max_iter = max_iter

    def state_dict(self):
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self):
        multiplier = self.multiplier(self.last_epoch / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]


class EndFollowingPrinter(EventWriter):
    """Detectron2's ``CommonMetricPrinter`` (losses, lr, iteration time, ETA), whose ETA counts to
    ``trainer.max_iter`` as it is at each write, where Detectron2's ``PeriodicWriter`` and
    ``EvalHook`` read the end too: a :class:`TimeBudget` may move it."""

    def __init__(self, trainer, window_size=20):
        proxied = isinstance(trainer, weakref.ProxyTypes)
        self.trainer = trainer if proxied else weakref.proxy(trainer)  # the trainer holds this
        self.window_size = window_size
        self.printer, self.max_iter = None, None  # Detectron2's printer, the end it counts to

    def write(self):
        if self.printer is None or self.max_iter != self.trainer.max_iter:
            self.max_iter = self.trainer.max_iter
            self.printer = CommonMetricPrinter(self.max_iter, self.window_size)
        self.printer.write()

    def close(self):
        if self.printer is not None:
            self.printer.close()


def end_following_writers(writers, trainer):
    """``writers`` (Detectron2's ``default_writers``) with their ``CommonMetricPrinter`` an
    :class:`EndFollowingPrinter` of ``trainer``."""
    return [EndFollowingPrinter(trainer) if type(w) is CommonMetricPrinter else w for w in writers]


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

    The end is ``trainer.max_iter``; ``followers`` are the objects whose public ``max_iter`` is set
    with it (a :class:`ScalableLRMultiplier`, Detectron2's ``PeriodicCheckpointer`` hooks). The
    hook goes first among the hooks: its ``before_step`` ends the loop (:class:`StopTraining`) at
    the end, and the others see a new end in the step it is set in.
    """

    def __init__(self, budget_s, first_drop=None, first=20, last=60, period=100, followers=()):
        if budget_s <= 0:
            raise ValueError(f"SOLVER.TIME_BUDGET_MINUTES must be > 0, got {budget_s / 60}")
        self.budget_s = budget_s
        self.first_drop = first_drop
        self.first, self.last, self.period = first, last, period
        self.followers = [f for f in followers if f is not None]
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

    def before_step(self):
        if self.trainer.iter >= self.trainer.max_iter:  # the fitted end, before the loop's own
            raise StopTraining

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
        """End the run at ``max_iter``: the trainer's end (the loop's, the evaluation's, the
        ETA's) and the followers' (the lr schedule, the final checkpoint)."""
        self.trainer.max_iter = max_iter
        for follower in self.followers:
            follower.max_iter = max_iter
        self.fitted_max_iter = max_iter
        self.trainer.storage.put_scalar("time_budget_max_iter", max_iter, smoothing_hint=False)
