"""Entry point of the multi-process training test: importable by the workers ``launch`` spawns."""

import json
import os

import torch

from detr_panoptic_d2.engine.trainer import end_distributed_run


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
    end_distributed_run()


def budget_main(out_dir, starts, budget_s, max_iter):
    """A training loop with a :class:`TimeBudget` and one collective per step (as DDP's gradient
    all-reduce), no model: each rank's fake clock reads ``starts[rank]`` when its loop starts, then
    the same instants on every rank (``5 + 0.5 (iteration + 1)`` s after each iteration); writes
    ``budget_<rank>.json`` (the iteration reached, the fitted end)."""
    import torch.distributed as dist
    from detectron2.engine import TrainerBase
    from detectron2.utils import comm

    from detr_panoptic_d2.engine.time_budget import TimeBudget, run_training_loop

    torch.set_num_threads(1)

    class LoopTrainer(TrainerBase):
        def run_step(self):
            dist.all_reduce(torch.ones(1))

    rank = comm.get_rank()
    trainer = LoopTrainer()
    trainer.max_iter = max_iter
    budget = TimeBudget(budget_s, first=2, last=4, period=1000)
    started = []

    def clock():
        if not started:
            started.append(True)
            return starts[rank]
        return 5.0 + 0.5 * (trainer.iter + 1)

    budget.clock = clock
    trainer.register_hooks([budget])
    run_training_loop(trainer, 0)
    with open(os.path.join(out_dir, f"budget_{rank}.json"), "w") as f:
        json.dump({"iter": trainer.iter, "fitted_max_iter": budget.fitted_max_iter}, f)
    end_distributed_run()  # neither process leaves while the group's threads still run


def ddp_main(out_dir, toy_root, stage, max_iter, extra, targetless_rank=None, targetless=None):
    """Train the tiny config of ``stage`` (with ``extra`` overrides) in this worker, recording
    after each iteration the float64 sum and max of every trainable parameter and floating-point
    buffer, and the number of targets of the batch; write ``ddp_<rank>.json`` (those records,
    the iteration reached) and ``ddp_<rank>.pt`` (the model's state dict). On rank
    ``targetless_rank`` the training set is ``targetless`` (image root, panoptic root, JSON of
    :func:`tiny_toy.write_targetless_panoptic`): its batches give no target."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_panoptic
    from detectron2.engine import HookBase
    from detectron2.utils import comm

    from detr_panoptic_d2.data.toy_dataset import toy_dataset_metadata
    from detr_panoptic_d2.engine import DetrPanopticTrainer

    torch.set_num_threads(1)
    from tiny_toy import tiny_cfg

    rank = comm.get_rank()
    extra = list(extra)
    if rank == targetless_rank:
        if "targetless_train" not in DatasetCatalog.list():
            register_coco_panoptic("targetless_train", toy_dataset_metadata(), *targetless)
        extra += ["DATASETS.TRAIN", "('targetless_train',)"]
    cfg = tiny_cfg(out_dir, stage=stage, max_iter=max_iter, extra=extra, toy_root=toy_root)
    trainer = DetrPanopticTrainer(cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    tracked = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tracked += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    records, targets = [], []
    prepare_targets = model.prepare_targets

    def counting_targets(batched_inputs, images):
        out = prepare_targets(batched_inputs, images)
        targets.append(sum(len(t["labels"]) for t in out))
        return out

    model.prepare_targets = counting_targets  # instance attribute: forward calls it

    class Record(HookBase):
        def after_step(self):
            with torch.no_grad():
                records.append(
                    {n: [float(p.double().sum()), float(p.double().max())] for n, p in tracked}
                )

    trainer.register_hooks([Record()])
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(out_dir, f"ddp_{rank}.json"), "w") as f:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        json.dump(
            {"iter": trainer.iter, "records": records, "targets": targets, "trainable": trainable},
            f,
        )
    torch.save(model.state_dict(), os.path.join(out_dir, f"ddp_{rank}.pt"))
    end_distributed_run()
