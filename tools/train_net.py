#!/usr/bin/env python
"""Train or evaluate DETR panoptic with Detectron2's DefaultTrainer.

python tools/train_net.py --config-file configs/toy/detr_R18_toy_stage1.yaml
python tools/train_net.py --config-file CONFIG --num-gpus 8
python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth
python tools/train_net.py --config-file CONFIG --resume
"""

import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.engine import DetrPanopticTrainer, end_distributed_run


def setup(args):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    requested = cfg.MODEL.DEVICE
    fallback = requested.startswith("cuda") and not torch.cuda.is_available()
    if fallback:  # deliberately lenient here (the Python API's build_model raises instead)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detr_panoptic_d2")
    if fallback:  # once the log is set up: one formatted line, also in the log file
        logging.getLogger("detr_panoptic_d2").warning(
            f"MODEL.DEVICE {requested!r}: CUDA is not available, running on the CPU "
            "(MODEL.DEVICE cpu)"
        )
    register_datasets_from_cfg(cfg)
    return cfg


def run(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            logging.getLogger("detr_panoptic_d2").warning(
                "--eval-only without MODEL.WEIGHTS: evaluating a RANDOMLY INITIALIZED model. "
                "Pass MODEL.WEIGHTS path/to/model.pth."
            )
        # eval mode before loading: a checkpoint that leaves parameters uninitialized (a stage-1
        # checkpoint under a stage-2 config, ...) is an error at the load, naming them
        model = DetrPanopticTrainer.build_model(cfg).eval()
        DetrCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return DetrPanopticTrainer.test(cfg, model)
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


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
