"""The lr schedule of both config worlds: Detectron2's ``SOLVER.LR_SCHEDULER_NAME`` schedules as a
keyword-argument function (a LazyCall target, and what the YACS trainer builds from
``cfg.SOLVER``)."""

import torch
from detectron2.config import get_cfg

from .config import add_detr_panoptic_config


def lr_schedule(
    *,
    max_iter,
    name="WarmupMultiStepLR",
    steps=(),
    gamma=0.1,
    warmup_iters=0,
    warmup_factor=1.0,
    warmup_method="linear",
    rescale_interval=False,
    base_lr=1.0,
    base_lr_end=0.0,
    num_decays=3,
):
    """The lr multiplier (a ``ParamScheduler``, for ``hooks.LRScheduler``) that Detectron2's
    ``build_lr_scheduler`` makes of ``SOLVER.LR_SCHEDULER_NAME`` and the ``SOLVER`` keys of the same
    names: the same schedule in both config worlds (steps past ``max_iter`` are dropped with
    Detectron2's warning)."""
    from detectron2.solver import build_lr_scheduler

    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    s = cfg.SOLVER
    s.MAX_ITER, s.LR_SCHEDULER_NAME, s.STEPS, s.GAMMA = max_iter, name, tuple(steps), gamma
    s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD = warmup_iters, warmup_factor, warmup_method
    s.RESCALE_INTERVAL, s.BASE_LR, s.BASE_LR_END = rescale_interval, base_lr, base_lr_end
    s.NUM_DECAYS = num_decays
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    return build_lr_scheduler(cfg, dummy)._multiplier
