#!/usr/bin/env python
"""Stage-1 and stage-2 training step time (forward + backward + AdamW step) of the R-50 DETR
panoptic model, or of the toy recipe's R-18 (--config toy).

    python benchmarks/bench_train_step.py [--config coco|toy] [--batch 2] [--size 512 683]
        [--targets 10] [--threads 2] [--device cpu|cuda] [--amp none bf16 fp16] [--repeat 5]
        [--stage 1 2] [--reference-repo PATH]

Synthetic images and targets (--targets rectangles per image, random classes). Stage 2 loads a
stage-1 checkpoint as MODEL.DETR.FROZEN_WEIGHTS, so only the mask head trains; "all queries" runs
the mask head on every query (as the original DETR does) instead of the matched ones only
(MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY). --amp: mixed precision as SOLVER.AMP runs it (torch.autocast
around the model's forward and losses; a gradient scaler for fp16 only). Each row gives the step's
matmul/convolution GFLOP and GFLOP/s beside the machine's measured peak (benchmarks/common.py). With
--reference-repo (a local checkout of the original DETR), its stage-2 step runs on the same batch.
--config toy: configs/toy/detr_R18_toy_stage{1,2}.yaml, defaults batch 8, 112x160, 4 targets (the
toy set's training input).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from common import ROOT, build_cfg, count_flops, machine_line, peak_gflops, peak_line, timed
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


CONFIGS = {
    "coco": (
        os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage1.yaml"),
        os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage2.yaml"),
    ),
    "toy": (
        os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage1.yaml"),
        os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage2.yaml"),
    ),
}
DEFAULTS = {"coco": (2, (512, 683), 10), "toy": (8, (112, 160), 4)}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def step_time(cfg, batch, amp, repeat, device):
    """Median step time, GFLOP of one step, the model, and the losses of the last step."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_detr_optimizer(cfg, model)
    dtype = AMP_DTYPES.get(amp)
    device_type = device.split(":")[0]
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    last = {}

    def step():
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            losses = model(batch)
            loss = sum(losses.values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        last["loss"] = float(loss)

    with EventStorage():
        t, _ = timed(step, warmup=1, repeat=repeat)
        flops = count_flops(step)
    return t, flops / 1e9, model, last["loss"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="coco", choices=sorted(CONFIGS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, nargs=2, default=None)
    p.add_argument("--targets", type=int, default=None)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--stage", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    p.add_argument("--reference-repo", default=None)
    p.add_argument("--child-original", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_repo and args.config != "coco":
        p.error("--reference-repo compares the R-50 (--config coco) stage-2 step")
    batch_d, size_d, targets_d = DEFAULTS[args.config]
    args.batch = args.batch or batch_d
    args.size = tuple(args.size or size_d)
    args.targets = args.targets or targets_d
    torch.set_num_threads(args.threads)
    if args.child_original:
        return child_original(args)
    h, w = args.size
    print(machine_line(args.device))
    dtypes = [torch.float32] + [AMP_DTYPES[a] for a in args.amp if a in AMP_DTYPES]
    peaks = peak_gflops(args.device, list(dict.fromkeys(dtypes)))
    print(peak_line(peaks))
    model_name = "R-50" if args.config == "coco" else "toy R-18"
    print(
        f"{model_name}, batch {args.batch}, {h}x{w}, {args.targets} targets/image, "
        f"{args.threads} threads"
    )
    print(
        f"{'stage':>28} | {'amp':>4} | {'step s':>7} | {'images/s':>8} | {'GFLOP':>6} | "
        f"{'GFLOP/s (peak)':>14} | {'loss':>8}"
    )
    stage1_file, stage2_file = CONFIGS[args.config]
    tmp = tempfile.mkdtemp()
    times = {}

    def row(name, amp, t, gflop, loss):
        dtype = str(AMP_DTYPES.get(amp, torch.float32)).replace("torch.", "")
        rate = f"{gflop / t:.0f} ({peaks[dtype][0]:.0f})"
        print(
            f"{name:>28} | {amp:>4} | {t:>7.3f} | {args.batch / t:>8.2f} | {gflop:>6.1f} | "
            f"{rate:>14} | {loss:>8.3f}",
            flush=True,
        )
        times[name, amp] = t

    for amp in args.amp:
        cfg1 = build_cfg(stage1_file, opts=["MODEL.MASK_HEAD.NAME", ""], device=args.device)
        batch = make_batch(args.batch, h, w, args.targets, cfg1.MODEL.DETR.NUM_CLASSES, args.device)
        t1, g1, model1, loss1 = step_time(cfg1, batch, amp, args.repeat, args.device)
        if 1 in args.stage:
            row("stage 1 (boxes)", amp, t1, g1, loss1)
        if 2 not in args.stage:
            continue
        ckpt = os.path.join(tmp, "stage1.pth")
        torch.save({"model": model1.state_dict()}, ckpt)
        del model1
        for matched in (True, False):
            cfg2 = build_cfg(
                stage2_file,
                opts=[
                    "MODEL.DETR.FROZEN_WEIGHTS",
                    ckpt,
                    "MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY",
                    matched,
                ],
                device=args.device,
            )
            t2, g2, _, loss2 = step_time(cfg2, batch, amp, args.repeat, args.device)
            name = "stage 2 (matched queries)" if matched else "stage 2 (all queries)"
            row(name, amp, t2, g2, loss2)
            if matched:
                t_plugin = t2
        if args.reference_repo:
            t_ref = original_step_time(args, amp)
            print(
                f"{'original stage 2':>28} | {amp:>4} | {t_ref:>7.3f} | {args.batch / t_ref:>8.2f}"
            )
            print(f"stage-2 step ratio plugin / original: {t_plugin / t_ref:.2f}")
    for (name, amp), t in times.items():
        if amp != "none" and (name, "none") in times:
            print(f"{name}: {amp} / fp32 step time {t / times[name, 'none']:.2f}")


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
