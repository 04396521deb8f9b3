#!/usr/bin/env python
"""Stage-1 and stage-2 training step time (forward + backward + AdamW step) of the R-50 DETR
panoptic model, or of the toy recipe's R-18 (--config toy).

    python benchmarks/bench_train_step.py [--config coco|toy] [--batch 2] [--size 512 683]
        [--targets 10] [--threads 2] [--device cpu|cuda] [--amp none bf16 fp16] [--repeat 5]
        [--stage 1 2] [--baseline] [--reference-repo PATH]

Synthetic images and targets (--targets rectangles per image, random classes). Stage 2 loads a
stage-1 checkpoint as MODEL.DETR.FROZEN_WEIGHTS, so only the mask head trains; "all queries" runs
the mask head on every query (as the original DETR does) instead of the matched ones only
(MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY). --amp: mixed precision as SOLVER.AMP runs it (torch.autocast
around the model's forward and losses; a gradient scaler for fp16 only). Each row gives the step's
matmul/convolution GFLOP and GFLOP/s beside the machine's measured peak (benchmarks/common.py). With
--reference-repo (a local checkout of the original DETR), its stage-2 step runs on the same batch.
--config toy: configs/toy/detr_R18_toy_stage{1,2}.yaml, defaults batch 8, 112x160, 4 targets (the
toy set's training input).

Steps are timed with --threads threads (common.timed's Timer, and so the peak, use one thread).
--baseline: each row also with the training levers off (LEVERS: "all off" is the step without
them, one row per lever alone, "all on" the default), their models built alike and their steps
timed in turns (after a warm-up, one step of each per round, so that the machine's load falls on
all alike), with the ratio time / "all off". Each variant's n-th step draws the same denoising
noise; their losses drift apart over the steps from float rounding only.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import ROOT, build_cfg, count_flops, machine_line, peak_gflops, peak_line
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
# Training levers: (config overrides turning one off, the lever's name).
LEVER_OFF = {
    "fused optimizer": ["SOLVER.OPTIMIZER_IMPL", "auto"],
    "batched criterion": ["MODEL.DETR.BATCHED_CRITERION", False],
}
LEVERS = {
    "all off": [v for off in LEVER_OFF.values() for v in off],
    **{
        f"{name} only": [v for other, off in LEVER_OFF.items() if other != name for v in off]
        for name in LEVER_OFF
    },
    "all on": [],
}


def make_step(cfg, batch, amp, device):
    """A training step of a fresh model (seed 0) of ``cfg`` on ``batch``: (step, model, last)
    where ``last["loss"]`` is the last step's loss."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_detr_optimizer(cfg, model)
    dtype = AMP_DTYPES.get(amp)
    device_type = device.split(":")[0]
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    last = {"steps": 0}

    def step():
        torch.manual_seed(last["steps"])  # the same denoising noise for every variant's n-th step
        last["steps"] += 1
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            losses = model(batch)
            loss = sum(losses.values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        last["loss"] = float(loss.detach())

    return step, model, last


def interleaved_times(steps, warmup, repeat):
    """{name: median seconds} of the ``steps`` ({name: fn}), one call of each per round (after
    ``warmup`` calls of each), with this process's threads; CUDA synchronized around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(repeat):
        for k, fn in steps.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def step_times(cfg_of, batch, amp, repeat, device, variants):
    """Median step time of each variant ({name: its config overrides}; cfg_of(overrides) → cfg),
    timed in turns, the GFLOP of one step, the last variant's model and each variant's last loss."""
    built = {name: make_step(cfg_of(opts), batch, amp, device) for name, opts in variants.items()}
    with EventStorage():
        times = interleaved_times({k: v[0] for k, v in built.items()}, 1, repeat)
        losses = {k: v[2]["loss"] for k, v in built.items()}
        step, model, _ = built[list(variants)[-1]]
        flops = count_flops(step)
    return times, flops / 1e9, model, losses


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
    p.add_argument("--baseline", action="store_true", help="also time the levers off")
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
        f"{'stage':>25} | {'levers':>23} | {'amp':>4} | {'step s':>7} | {'/ off':>5} | "
        f"{'images/s':>8} | {'GFLOP':>6} | {'GFLOP/s (peak)':>14} | {'loss':>8}"
    )
    stage1_file, stage2_file = CONFIGS[args.config]
    tmp = tempfile.mkdtemp()
    variants = LEVERS if args.baseline else {"all on": []}
    times = {}

    def rows(name, amp, ts, gflop, losses):
        dtype = str(AMP_DTYPES.get(amp, torch.float32)).replace("torch.", "")
        for levers, t in ts.items():
            rate = f"{gflop / t:.0f} ({peaks[dtype][0]:.0f})"
            ratio = f"{t / ts['all off']:.2f}" if "all off" in ts else ""
            print(
                f"{name:>25} | {levers:>23} | {amp:>4} | {t:>7.3f} | {ratio:>5} | "
                f"{args.batch / t:>8.2f} | {gflop:>6.1f} | {rate:>14} | {losses[levers]:>8.3f}",
                flush=True,
            )
        times[name, amp] = ts["all on"]

    for amp in args.amp:
        num_classes = build_cfg(stage1_file).MODEL.DETR.NUM_CLASSES
        batch = make_batch(args.batch, h, w, args.targets, num_classes, args.device)

        def stage1_cfg(opts):
            return build_cfg(stage1_file, ["MODEL.MASK_HEAD.NAME", "", *opts], args.device)

        stage1_variants = variants if 1 in args.stage else {"all on": []}
        t1, g1, model1, loss1 = step_times(
            stage1_cfg, batch, amp, args.repeat, args.device, stage1_variants
        )
        if 1 in args.stage:
            rows("stage 1 (boxes)", amp, t1, g1, loss1)
        if 2 not in args.stage:
            continue
        ckpt = os.path.join(tmp, "stage1.pth")
        torch.save({"model": model1.state_dict()}, ckpt)
        del model1
        for matched in (True, False):

            def stage2_cfg(opts, matched=matched):
                stage2 = ["MODEL.DETR.FROZEN_WEIGHTS", ckpt]
                stage2 += ["MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY", matched]
                return build_cfg(stage2_file, stage2 + list(opts), args.device)

            t2, g2, _, loss2 = step_times(
                stage2_cfg, batch, amp, args.repeat, args.device, variants
            )
            name = "stage 2 (matched queries)" if matched else "stage 2 (all queries)"
            rows(name, amp, t2, g2, loss2)
            if matched:
                t_plugin = t2["all on"]
        if args.reference_repo:
            t_ref = original_step_time(args, amp)
            print(
                f"{'original stage 2':>25} | {'':>23} | {amp:>4} | {t_ref:>7.3f} | {'':>5} | "
                f"{args.batch / t_ref:>8.2f}"
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

    t = interleaved_times({"original": ref_step}, 1, args.repeat)["original"]
    print(f"RESULT {t}")


if __name__ == "__main__":
    main()
