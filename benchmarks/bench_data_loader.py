#!/usr/bin/env python
"""How long the training loop waits for each batch of the toy recipe's training loader, with
torch's transport (2 images per worker prefetched, a file descriptor per tensor) and with the
plugin's (DATALOADER.PREFETCH_BATCHES, DATALOADER.SHARING_STRATEGY).

    python benchmarks/bench_data_loader.py [--step-s 0.25] [--batches 30] [--rounds 2]

The toy data set is generated under a temporary folder. Between two batches the "step" either
sleeps (an idle CPU: the receiving cost alone) or keeps the process's threads busy with matmuls
for --step-s seconds (a training step's CPU load). Each round times every variant in turn;
medians of the per-batch waits.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
from common import ROOT, build_cfg, machine_line

from detr_panoptic_d2.data import register_toy_panoptic_from_cfg
from detr_panoptic_d2.engine import DetrPanopticTrainer

VARIANTS = {
    "torch's (fd, 2 images/worker)": ["DATALOADER.PREFETCH_BATCHES", 0,
                                      "DATALOADER.SHARING_STRATEGY", "file_descriptor"],
    "plugin's defaults": [],
}  # fmt: skip


def waits(cfg, step_s, batches, busy):
    loader = iter(DetrPanopticTrainer.build_train_loader(cfg))
    next(loader)  # workers started
    x = torch.randn(1024, 1024)
    out = []
    for _ in range(batches):
        start = time.perf_counter()
        next(loader)
        out.append(time.perf_counter() - start)
        if not busy:
            time.sleep(step_s)
            continue
        start = time.perf_counter()
        while time.perf_counter() - start < step_s:
            x @ x
    del loader
    return statistics.median(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step-s", type=float, default=0.25)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(machine_line("cpu"))
    root = os.path.join(tempfile.mkdtemp(), "toy")
    config = os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage1.yaml")
    cfgs = {k: build_cfg(config, ["DATASETS.TOY.ROOT", root, *v]) for k, v in VARIANTS.items()}
    register_toy_panoptic_from_cfg(cfgs["plugin's defaults"])
    c = cfgs["plugin's defaults"]
    print(
        f"toy stage-1 loader: batch {c.SOLVER.IMS_PER_BATCH}, "
        f"{c.DATALOADER.NUM_WORKERS} worker(s), {torch.get_num_threads()} threads, "
        f"step {args.step_s} s"
    )
    print(f"{'transport':>32} | {'step':>5} | round | wait per batch (ms)")
    for busy in (False, True):
        for r in range(args.rounds):
            for name, cfg in cfgs.items():
                w = waits(cfg, args.step_s, args.batches, busy)
                print(f"{name:>32} | {'busy' if busy else 'idle':>5} | {r:>5} | {w * 1e3:.1f}")


if __name__ == "__main__":
    main()
