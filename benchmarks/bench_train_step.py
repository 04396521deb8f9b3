#!/usr/bin/env python
"""Stage-1 and stage-2 training step time (forward + backward + AdamW step) of the R-50 DETR panoptic model.

    python benchmarks/bench_train_step.py [--batch 2] [--size 512 683] [--targets 10] [--threads 2]
        [--device cpu|cuda] [--amp none bf16 fp16] [--repeat 5] [--reference-repo PATH]

Synthetic images and targets (--targets rectangles per image, random classes). Stage 2 loads a stage-1
checkpoint as MODEL.DETR.FROZEN_WEIGHTS, so only the mask head trains; "all queries" runs the mask head on
every query (as the original DETR does) instead of the matched ones only (MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY).
With --reference-repo (a local checkout of the original DETR), its stage-2 step runs on the same batch.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from common import build_cfg, machine_line, timed
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from reference import reference_env
from torchvision.ops import masks_to_boxes

from detr_panoptic_d2.engine import build_detr_optimizer


def make_batch(batch, h, w, num_targets, num_classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        masks = torch.zeros(num_targets, h, w, dtype=torch.bool)
        for i in range(num_targets):
            y0, x0 = (
                int(torch.randint(0, h // 2, (1,), generator=g)),
                int(torch.randint(0, w // 2, (1,), generator=g)),
            )
            masks[i, y0 : y0 + h // 3, x0 : x0 + w // 3] = True
        inst = Instances((h, w))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(masks_to_boxes(masks))
        inst.gt_classes = torch.randint(0, num_classes, (num_targets,), generator=g)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).to(device)
        out.append({"image": image, "instances": inst})
    return out


def step_time(cfg, batch, amp, repeat, device):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_detr_optimizer(cfg, model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            losses = model(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    with EventStorage():
        t, _ = timed(step, warmup=1, repeat=repeat)
    return t, model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(512, 683))
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--reference-repo", default=None)
    p.add_argument("--child-original", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_original:
        return child_original(args)
    h, w = args.size
    print(machine_line(args.device))
    print(
        f"R-50, batch {args.batch}, {h}x{w}, {args.targets} targets/image, {args.threads} threads"
    )
    print(f"{'stage':>28} | {'amp':>4} | {'step s':>7} | {'images/s':>8}")
    tmp = tempfile.mkdtemp()
    for amp in args.amp:
        cfg1 = build_cfg(opts=["MODEL.MASK_HEAD.NAME", ""], device=args.device)
        batch = make_batch(args.batch, h, w, args.targets, cfg1.MODEL.DETR.NUM_CLASSES, args.device)
        t1, model1 = step_time(cfg1, batch, amp, args.repeat, args.device)
        print(f"{'stage 1 (boxes)':>28} | {amp:>4} | {t1:>7.3f} | {args.batch / t1:>8.2f}")
        ckpt = os.path.join(tmp, "stage1.pth")
        torch.save({"model": model1.state_dict()}, ckpt)
        del model1
        for matched in (True, False):
            cfg2 = build_cfg(
                opts=[
                    "MODEL.DETR.FROZEN_WEIGHTS",
                    ckpt,
                    "MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY",
                    matched,
                ],
                device=args.device,
            )
            t2, _ = step_time(cfg2, batch, amp, args.repeat, args.device)
            name = "stage 2 (matched queries)" if matched else "stage 2 (all queries)"
            print(f"{name:>28} | {amp:>4} | {t2:>7.3f} | {args.batch / t2:>8.2f}", flush=True)
            if matched:
                t_plugin = t2
        if args.reference_repo:
            t_ref = original_step_time(args, amp)
            print(
                f"{'original stage 2':>28} | {amp:>4} | {t_ref:>7.3f} | {args.batch / t_ref:>8.2f}"
            )
            print(f"stage-2 step ratio plugin / original: {t_plugin / t_ref:.2f}")


def original_step_time(args, amp):
    """The original's stage-2 step on the same batch, timed in a child process that imports it."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-original",
        "--amp",
        amp,
        "--batch",
        str(args.batch),
        "--size",
        *map(str, args.size),
        "--targets",
        str(args.targets),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=reference_env(args.reference_repo)
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"original stage-2 step failed:\n{proc.stderr[-3000:]}")
    return float(lines[-1].split()[1])


def child_original(args):
    from reference import OriginalDetrStage2Step

    cfg = build_cfg(opts=["MODEL.MASK_HEAD.NAME", ""], device=args.device)
    batch = make_batch(
        args.batch, *args.size, args.targets, cfg.MODEL.DETR.NUM_CLASSES, args.device
    )
    ref = OriginalDetrStage2Step(cfg, args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp[0])

    def ref_step():
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            ref(batch)

    t, _ = timed(ref_step, warmup=1, repeat=args.repeat)
    print(f"RESULT {t}")


if __name__ == "__main__":
    main()
