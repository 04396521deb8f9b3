"""Entry point of the multi-process training test: importable by the workers ``launch`` spawns."""

import json
import os

import torch


def train_main(out_dir, toy_root, max_iter):
    """Build the tiny stage-1 trainer in this worker, train, and write ``rank_<r>.json`` (rank,
    world size, last iteration reached, whether the model was wrapped in DDP, sum of the parameters)
    into ``out_dir``."""
    from detectron2.utils import comm

    from detr_panoptic_d2.engine import DetrPanopticTrainer

    torch.set_num_threads(1)
    from tiny_toy import tiny_cfg

    cfg = tiny_cfg(out_dir, max_iter=max_iter, toy_root=toy_root)
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = (
        trainer.model.module
        if isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        else trainer.model
    )
    param_sum = float(sum(p.detach().double().sum() for p in model.parameters()))
    rank = comm.get_rank()
    with open(os.path.join(out_dir, f"rank_{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": comm.get_world_size(),
                "iter": trainer.iter,
                "param_sum": param_sum,
                "ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel),
            },
            f,
        )
