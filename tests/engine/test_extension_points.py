"""The trainer, the time budget and CPU AMP go through Detectron2's extension points: no private
attribute of Detectron2's objects written (nor read), Detectron2's loop ended by the budget at the
fitted end with the lr of the scaled schedule, ``SimpleTrainer.run_step`` under the AMP step with
the numbers of AMPTrainer's step."""

import ast
import inspect
import itertools
import logging
import os
import time
from functools import lru_cache

import detectron2
import fvcore
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.solver import LRMultiplier, WarmupParamScheduler, build_lr_scheduler
from detectron2.utils.events import EventStorage, get_event_storage
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detr_panoptic_d2.engine import amp, time_budget, trainer
from detr_panoptic_d2.engine.amp import DetrAMPTrainer
from detr_panoptic_d2.engine.optimizer import _clip_full_model
from detr_panoptic_d2.engine.time_budget import (
    EndFollowingPrinter,
    ScalableLRMultiplier,
    TimeBudget,
    run_training_loop,
)
from detr_panoptic_d2.engine.trainer import DetrPanopticTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKED = [
    trainer.__file__,
    time_budget.__file__,
    amp.__file__,
    os.path.join(REPO, "tools", "train_net.py"),
    os.path.join(REPO, "tools", "lazyconfig_train_net.py"),
]
# DefaultTrainer's place for the per-step trainer, which its run_step and state_dict use: a
# subclass that builds its own step trainer (DefaultTrainer.__init__ builds an AMPTrainer, which
# requires CUDA, and a DDP wrapper that rejects a model on the CPU) sets it
ALLOWED_SELF_WRITES = {("DetrPanopticTrainer", "_trainer")}


# ---- no private attribute of Detectron2's objects ------------------------------------------------
def _private(name):
    return name.startswith("_") and not name.startswith("__")


def _self_private_writes(tree):
    """``self._name = ...`` in ``tree`` (a module or class), as names."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and _private(node.attr)
    }


@lru_cache(maxsize=None)
def _library_private_names():
    """The private attributes Detectron2's and fvcore's classes set on themselves."""
    names = set()
    for package in (detectron2, fvcore):
        for root, _, files in os.walk(os.path.dirname(package.__file__)):
            for f in files:
                if f.endswith(".py"):
                    with open(os.path.join(root, f), encoding="utf-8") as src:
                        names |= _self_private_writes(ast.parse(src.read()))
    return names


def _inherited_private_names(cls):
    """The private attributes that the Detectron2 / fvcore classes among ``cls``'s bases set."""
    names = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in ("detectron2", "fvcore"):
            names |= _self_private_writes(ast.parse(inspect.getsource(base)))
    return names


def _violations(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    namespaces = {trainer.__file__: trainer, time_budget.__file__: time_budget, amp.__file__: amp}
    module = namespaces.get(path)
    found = []

    def visit(node, cls_name):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Attribute) and _private(child.attr):
                on_self = isinstance(child.value, ast.Name) and child.value.id in ("self", "cls")
                where = f"{os.path.basename(path)}:{child.lineno} .{child.attr}"
                if isinstance(child.ctx, ast.Store):
                    if not on_self:
                        found.append(f"{where}: written on another object")
                    elif (cls_name, child.attr) not in ALLOWED_SELF_WRITES and module is not None:
                        cls = getattr(module, cls_name)
                        if child.attr in _inherited_private_names(cls):
                            found.append(f"{where}: a private attribute of {cls.__mro__[1:]}")
                elif not on_self and child.attr in _library_private_names():
                    found.append(f"{where}: Detectron2's private attribute read")
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and child.func.id == "setattr"
                and len(child.args) > 1
                and isinstance(child.args[1], ast.Constant)
                and _private(str(child.args[1].value))
            ):
                found.append(
                    f"{os.path.basename(path)}:{child.lineno} setattr {child.args[1].value}"
                )
            visit(child, cls_name)

    visit(tree, None)
    return found


@pytest.mark.parametrize("path", CHECKED, ids=os.path.basename)
def test_no_private_attribute_of_detectron2_objects(path):
    assert _violations(path) == []


def test_the_check_finds_private_writes(tmp_path):
    """The checker itself: what the time budget would write to rescale Detectron2's objects."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def set_max_iter(trainer, writer, n):\n"
        "    trainer.scheduler._max_iter = n\n"
        "    for w in writer._writers:\n"
        "        setattr(w, '_max_iter', n)\n"
    )
    found = _violations(str(bad))
    assert len(found) == 3, found


def test_the_yacs_trainer_runs_detectron2s_train():
    assert DetrPanopticTrainer.train is DefaultTrainer.train
    assert "run_step" not in vars(DetrPanopticTrainer)


# ---- the lr schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR"]
)
def test_solver_schedule_is_detectron2s(name):
    cfg = get_cfg()
    s = cfg.SOLVER
    s.LR_SCHEDULER_NAME, s.MAX_ITER, s.STEPS, s.WARMUP_ITERS = name, 50, (20, 35), 7
    s.BASE_LR, s.BASE_LR_END, s.NUM_DECAYS = 0.01, 0.001, 2
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]

    def optimizer():
        return torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}], lr=0.01)

    ours = DetrPanopticTrainer.build_lr_scheduler(cfg, optimizer())
    assert isinstance(ours, ScalableLRMultiplier) and ours.max_iter == 50
    reference = build_lr_scheduler(cfg, optimizer())
    for it in range(s.MAX_ITER):
        assert ours.get_last_lr() == reference.get_last_lr(), it
        if it < s.MAX_ITER - 1:  # the schedule's fraction 1 is past the last iteration
            ours.step()
            reference.step()
    assert ours.state_dict() == reference.state_dict()


def _schedule():
    # warmup over 5 of 40 iterations, a drop at 20 of 40
    steps = MultiStepParamScheduler([1.0, 0.1], milestones=[20], num_updates=40)
    return WarmupParamScheduler(steps, 0.1, 5 / 40)


def test_scalable_multiplier_is_lrmultiplier_with_a_new_end():
    """At each iteration, the lr of Detectron2's LRMultiplier whose length is changed in place."""
    ours = ScalableLRMultiplier(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), _schedule(), 40
    )
    ref = LRMultiplier(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), _schedule(), 40)
    for it in range(23):  # the last end
        if it in (3, 9, 17):
            ours.max_iter = ref._max_iter = {3: 13, 9: 40, 17: 23}[it]  # the reference: in place
        assert ours.get_last_lr() == ref.get_last_lr(), it
        ours.step()
        ref.step()
    assert ours._max_iter == ours.max_iter == 23


# ---- the time budget on Detectron2's loop --------------------------------------------------------
class _Zero(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def forward(self, data):
        return {"loss": (self.w**2).sum()}


class _Follower:
    max_iter = None


def _budgeted_loop(follower=None):
    model = _Zero()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step_trainer = SimpleTrainer(model, itertools.repeat(None), opt)
    scheduler = ScalableLRMultiplier(opt, _schedule(), 40)
    # 1 s per clock reading: iteration 2 at 1 s, 4 at 2 s: 0.5 s/iter; 3 s of the 5 s budget
    # left: 6 more, 10 of the 40 iterations
    budget = TimeBudget(5, 20 / 40, first=2, last=4, period=1000, followers=[scheduler, follower])
    ticks = itertools.count()
    budget.clock = lambda: next(ticks)
    lrs = {}

    class RecordLR(hooks.HookBase):
        def after_step(self):
            lrs[self.trainer.iter] = opt.param_groups[0]["lr"]

    step_trainer.register_hooks(
        [budget, hooks.IterationTimer(), RecordLR(), hooks.LRScheduler(scheduler=scheduler)]
    )
    run_training_loop(step_trainer, 0, 40)
    return step_trainer, budget, scheduler, lrs


def test_budget_ends_detectron2s_loop_with_the_scaled_schedule(caplog):
    follower = _Follower()
    with caplog.at_level(logging.INFO):
        step_trainer, budget, scheduler, lrs = _budgeted_loop(follower)
    assert budget.fitted_max_iter == 10 and step_trainer.max_iter == 10
    assert step_trainer.iter == 10  # as Detectron2's loop leaves it after its last iteration
    assert scheduler.max_iter == follower.max_iter == 10
    assert "Exception during training" not in caplog.text  # ended, not failed
    # the reference: Detectron2's LRMultiplier, its length set in place when the budget decides
    # (after iteration 3): warmup and drop scaled to 10 iterations from iteration 4 on
    ref = LRMultiplier(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), _schedule(), 40)
    expected = {}
    for it in range(10):
        expected[it] = ref.get_last_lr()[0]
        if it == 3:
            ref._max_iter = 10
        ref.step()
    assert lrs == expected
    assert lrs[9] == pytest.approx(0.1)  # past the drop, at 5 of 10


def test_budget_that_fits_runs_the_whole_loop():
    model = _Zero()
    step_trainer = SimpleTrainer(
        model, itertools.repeat(None), torch.optim.SGD(model.parameters(), lr=1)
    )
    step_trainer.register_hooks([TimeBudget(3600, first=2, last=4)])
    run_training_loop(step_trainer, 0, 8)
    assert step_trainer.iter == 8 and step_trainer.max_iter == 8


# ---- the ETA -------------------------------------------------------------------------------------
def test_printer_eta_counts_to_the_trainers_end():
    class Loop:
        max_iter = 40

    loop = Loop()
    printer = EndFollowingPrinter(loop)
    with EventStorage(0) as storage:
        for it in range(6):
            storage.iter = it
            storage.put_scalar("time", 0.5)
        printer.write()
        assert storage.latest()["eta_seconds"][0] == pytest.approx(0.5 * (40 - 5 - 1))
        loop.max_iter = 10
        printer.write()
        assert storage.latest()["eta_seconds"][0] == pytest.approx(0.5 * (10 - 5 - 1))


# ---- AMP: SimpleTrainer's step -------------------------------------------------------------------
class _Net(torch.nn.Module):
    """Two linear layers (autocast), losses in float32, one loss a multiple of another."""

    def __init__(self, record=None):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
        self.record = record

    def forward(self, data):
        h = self.b(torch.relu(self.a(torch.stack(data))))
        if self.record is not None:
            self.record.append(("forward", torch.is_autocast_enabled("cpu"), h.dtype))
            h.register_hook(
                lambda g: self.record.append(("backward", torch.is_autocast_enabled("cpu")))
            )
        with torch.autocast("cpu", enabled=False):
            l1 = h.float().pow(2).mean()
            l2 = (h.float() - 1).abs().mean()
        return {"l1": l1, "l2": l2, "l3": 0.5 * l1}


def _reference_amp_step(t):
    """AMPTrainer.run_step's logic, with ``torch.autocast`` on the CPU."""
    start = time.perf_counter()
    data = next(t._data_loader_iter)
    data_time = time.perf_counter() - start
    with torch.autocast("cpu", dtype=t.precision):
        loss_dict = t.model(data)
        losses = sum(loss_dict.values())
    t.optimizer.zero_grad()
    t.grad_scaler.scale(losses).backward()
    if t.log_grad_scaler:
        get_event_storage().put_scalar("[metric]grad_scaler", t.grad_scaler.get_scale())
    t.after_backward()
    t._write_metrics(loss_dict, data_time)
    t.grad_scaler.step(t.optimizer)
    t.grad_scaler.update()


def _amp_run(precision, init_scale, step, big=1.0, steps=4):
    model = _Net()
    opt = _clip_full_model(torch.optim.AdamW, 0.1, 2.0)(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    batches = [
        [torch.randn(8, generator=g) * (big if i == 1 else 1.0) for _ in range(3)]
        for i in range(steps)
    ]
    t = DetrAMPTrainer(model, batches, opt, precision=precision, log_grad_scaler=True)
    enabled = precision == torch.float16
    t.grad_scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=enabled)
    logged = []
    with EventStorage(0) as storage:
        t.storage = storage
        for it in range(steps):
            t.iter = storage.iter = it
            step(t)
            logged.append(
                (
                    storage.history("total_loss").latest(),
                    storage.history("[metric]grad_scaler").latest(),
                    t.grad_scaler.get_scale(),
                )
            )
    return logged, [p.detach().clone() for p in model.parameters()], opt.state_dict()["state"]


@pytest.mark.parametrize(
    "precision,init_scale,big",
    [
        (torch.bfloat16, 1.0, 1.0),
        (torch.float16, 2.0**8, 1.0),
        (torch.float16, 2.0**16, 1e3),  # the step of the large batch overflows: skipped
    ],
    ids=["bf16", "fp16", "fp16_overflow"],
)
def test_amp_step_is_amptrainers(precision, init_scale, big):
    ours = _amp_run(precision, init_scale, DetrAMPTrainer.run_step, big)
    reference = _amp_run(precision, init_scale, _reference_amp_step, big)
    assert ours[0] == reference[0]
    assert all(torch.equal(a, b) for a, b in zip(ours[1], reference[1]))
    assert ours[2].keys() == reference[2].keys()
    for k, state in ours[2].items():
        assert all(torch.equal(v, reference[2][k][n]) for n, v in state.items())
    if big > 1:
        assert ours[0][2][2] == init_scale / 2  # backed off once: one step skipped


def test_amp_step_runs_simpletrainers_step_forward_autocast_only(monkeypatch):
    calls = []
    simple_step = SimpleTrainer.run_step

    def spy(self):
        calls.append(type(self))
        return simple_step(self)

    def cuda_only(self):
        raise AssertionError("AMPTrainer.run_step requires CUDA")

    monkeypatch.setattr(SimpleTrainer, "run_step", spy)
    monkeypatch.setattr(AMPTrainer, "run_step", cuda_only)
    record = []
    model = _Net(record)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    t = DetrAMPTrainer(model, [[torch.randn(8) for _ in range(2)]], opt, precision=torch.bfloat16)
    with EventStorage(0) as storage:
        t.storage = storage
        t.run_step()
    assert calls == [DetrAMPTrainer]
    assert record == [("forward", True, torch.bfloat16), ("backward", False)]
    assert not model._forward_hooks and not model._forward_pre_hooks  # removed after the step
    assert not torch.is_autocast_enabled("cpu")
