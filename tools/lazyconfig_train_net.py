#!/usr/bin/env python
"""Train or evaluate DETR panoptic from a LazyConfig (configs/**/*.py), as Detectron2's
tools/lazyconfig_train_net.py does, with the plugin's checkpointer (official DETR checkpoints
converted on load), evaluators, time budget and AMP on any device.

python tools/lazyconfig_train_net.py --config-file configs/toy/detr_R18_toy_stage1.py
python tools/lazyconfig_train_net.py --config-file configs/toy/detr_R18_toy_stage2.py \
    model.frozen_weights=output/toy/stage1/model_final.pth
python tools/lazyconfig_train_net.py --config-file CONFIG --eval-only \
    train.init_checkpoint=model.pth
python tools/lazyconfig_train_net.py --config-file CONFIG --num-gpus 8 [--resume] [KEY=VALUE ...]

Overrides are LazyConfig's (``model.detr.num_queries=50``, ``train.max_iter=1000``,
``datasets.train='["my_train"]'``); ``--num-machines``/``--machine-rank``/``--dist-url`` as in
Detectron2. Without CUDA, ``train.device`` cuda falls back to cpu, with a warning.
"""

import logging

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.engine.amp import make_step_trainer
from detr_panoptic_d2.engine.time_budget import (
    ScalableLRMultiplier,
    end_following_writers,
    run_training_loop,
)
from detr_panoptic_d2.engine.trainer import (
    build_detr_checkpointer,
    check_same_start,
    create_detr_ddp_model,
    detr_training_hooks,
    end_distributed_run,
)

logger = logging.getLogger("detr_panoptic_d2")


def do_test(cfg, model):
    """PQ (and AP, mIoU) of ``model`` on ``cfg.dataloader.test`` by ``dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg):
    """Detectron2's LazyConfig training loop with the plugin's pieces: ``train.amp`` in
    ``train.amp.precision`` on any device, a CPU-aware DDP wrapper, checkpoints on each machine
    without a shared ``train.output_dir``, BatchNorm statistics averaged across processes, and
    ``train.time_budget_minutes``."""
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_detr_ddp_model(model, **cfg.train.ddp)
    trainer = make_step_trainer(
        model,
        train_loader,
        optim,
        amp=cfg.train.amp.enabled,
        precision=cfg.train.amp.get("precision", "bfloat16"),
        device=cfg.train.device,
        auto=cfg.train.amp.get("auto", False),
    )
    checkpointer = build_detr_checkpointer(model, cfg.train.output_dir, trainer)
    scheduler = ScalableLRMultiplier(optim, instantiate(cfg.lr_multiplier), cfg.train.max_iter)
    periodic_checkpointer = (
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process()
        else None
    )
    first, before_eval = detr_training_hooks(
        model,
        checkpointer,
        cfg.train.checkpointer.period,
        cfg.train.get("time_budget_minutes", 0),
        cfg.lr_multiplier.get("steps", ()),
        cfg.train.max_iter,
        followers=[scheduler, periodic_checkpointer],
    )
    trainer.register_hooks(
        first
        + [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=scheduler),
            periodic_checkpointer,
        ]
        + before_eval
        + [
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                end_following_writers(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter), trainer
                ),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    check_same_start(start_iter, cfg.train.output_dir)
    run_training_loop(trainer, start_iter, cfg.train.max_iter)  # a time budget may end it early


def setup(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    requested = cfg.train.device
    fallback = str(requested).startswith("cuda") and not torch.cuda.is_available()
    if fallback:
        cfg.train.device = "cpu"
    default_setup(cfg, args)
    if fallback:
        logger.warning(
            f"train.device {requested!r}: CUDA is not available, running on the CPU (train.device "
            "cpu)"
        )
    return cfg


def run(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            logger.warning(
                "--eval-only without train.init_checkpoint: evaluating a RANDOMLY INITIALIZED "
                "model. Pass train.init_checkpoint=path/to/model.pth."
            )
        # eval mode before loading: a checkpoint that leaves parameters uninitialized is an
        # error at the load, naming them
        model = instantiate(cfg.model).to(cfg.train.device).eval()
        model = create_detr_ddp_model(model)
        DetrCheckpointer(model, cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    do_train(args, cfg)


def main(args):
    result = run(args)
    end_distributed_run()
    return result


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
