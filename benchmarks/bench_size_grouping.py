#!/usr/bin/env python
"""The toy stage-1 training step on the toy loader's own batches, with the batches formed by
Detectron2's aspect-ratio grouping (DATALOADER.SIZE_GROUPING_PX 0, the default) and by the plugin's
size grouping (16 px): padded pixels per image and step time (forward + backward + AdamW step).

    python benchmarks/bench_size_grouping.py [--batches 40] [--stage 1 2] [--threads 2]

The toy data set is generated under a temporary folder; each variant's loader (in the main
process) draws --batches batches first, then the steps of both variants run in turns (one step of
each per round, so that the machine's load falls on both alike) on two models built alike. The
mean over the batches is the figure (the batches' sizes differ, so a median would pick one
size); the first 3 steps of each are a warm-up.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
from common import ROOT, build_cfg, machine_line
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from detr_panoptic_d2.data import register_toy_panoptic_from_cfg
from detr_panoptic_d2.engine import DetrPanopticTrainer, build_detr_optimizer

VARIANTS = {"aspect-ratio grouping": 0, "size grouping (16 px)": 16}
WARMUP = 3


def padded_pixels(batch):
    """Pixels of one image of the batch's padded tensor (ImageList pads to the largest sides)."""
    return max(d["image"].shape[1] for d in batch) * max(d["image"].shape[2] for d in batch)


def stage2_weights(cfg, tmp):
    """A stage-1 checkpoint of a fresh model, to freeze for stage 2."""
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, tmp).save("stage1")
    return os.path.join(tmp, "stage1.pth")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--stage", nargs="+", type=int, default=[1], choices=[1, 2])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line("cpu"))
    tmp = tempfile.mkdtemp()
    root = os.path.join(tmp, "toy")
    configs = os.path.join(ROOT, "configs", "toy")
    print(f"toy loader's batches, {args.batches} per variant, {args.threads} threads")
    print(
        f"{'stage':>7} | {'batches':>22} | {'padded px/image':>15} | {'step s':>7} | {'ratio':>5}"
    )
    for stage in args.stage:
        opts = ["DATASETS.TOY.ROOT", root, "DATALOADER.NUM_WORKERS", 0]
        if stage == 2:
            s1 = build_cfg(os.path.join(configs, "detr_R18_toy_stage1.yaml"), opts)
            register_toy_panoptic_from_cfg(s1)  # the model reads the things/stuff split
            opts += ["MODEL.DETR.FROZEN_WEIGHTS", stage2_weights(s1, tmp)]
        config = os.path.join(configs, f"detr_R18_toy_stage{stage}.yaml")
        runs = {}
        for name, px in VARIANTS.items():
            cfg = build_cfg(config, opts + ["DATALOADER.SIZE_GROUPING_PX", px])
            register_toy_panoptic_from_cfg(cfg)
            loader = iter(DetrPanopticTrainer.build_train_loader(cfg))
            batches = [next(loader) for _ in range(args.batches + WARMUP)]
            torch.manual_seed(0)
            model = build_model(cfg).train()
            runs[name] = (batches, model, build_detr_optimizer(cfg, model), [])
        with EventStorage():
            for i in range(args.batches + WARMUP):
                for batches, model, opt, times in runs.values():
                    start = time.perf_counter()
                    loss = sum(model(batches[i]).values())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if i >= WARMUP:
                        times.append(time.perf_counter() - start)
        base = None
        for name, (batches, _, _, times) in runs.items():
            px = statistics.mean(map(padded_pixels, batches[WARMUP:]))
            t = statistics.mean(times)
            base = base or t
            print(f"{stage:>7} | {name:>22} | {px:>15.0f} | {t:>7.3f} | {t / base:>5.2f}")


if __name__ == "__main__":
    main()
