#!/usr/bin/env python
"""The GPU check: what a lent GPU has to show, in one run, as one table.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR] [--skip SECTION ...]

Sections (each row is measured on its own; a failure is a row of the table, not the end of the run):

* ``tests``: the model, engine and export tests with ``DETR_TEST_DEVICE`` set to the device (the
  tiny toy configs then put the model there: ``tests/tiny_toy.py``);
* ``toy``: toy stage 1 and stage 2 (``tools/train_net.py``) for a few hundred iterations each with
  fp32, bf16 and fp16 mixed precision (``SOLVER.AMP``): every logged loss finite, PQ on the toy val
  split;
* ``inference``: the R-50 panoptic model (random weights, 55 queries kept by a hook on the class
  head) at 800x1333 in fp32 / bf16 / fp16 (``MODEL.DETR.TEST.PRECISION``), batch 1 and 8: images/s
  and peak memory (``torch.cuda.max_memory_allocated``; on the CPU the process's peak RSS);
* ``train_step``: one R-50 stage-1 and stage-2 training step at batch 4 (800x1333, 10 targets per
  image): s/iteration and peak memory;
* ``export``: the toy stage-2 model trained above, exported to TorchScript and ONNX from the device,
  each run by ``tools/run_exported.py`` on the CPU.

``--device cpu`` is the dry run (same sections, same table); ``--quick`` shrinks iterations, sizes
and batches so that the dry run ends in minutes on two CPU cores. ``benchmarks/gpu_check.sh`` wraps
this with the 8-minute limit of a lent GPU.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch
from common import ROOT, build_cfg, build_eval_model, fake_image, force_kept_queries, timed

PRECISIONS = ("fp32", "bf16", "fp16")
AMP = {"fp32": [], "bf16": ["bfloat16"], "fp16": ["float16"]}
STAGE1_R50 = os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage1.yaml")
STAGE2_R50 = os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage2.yaml")
TOY1 = os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage1.yaml")
TOY2 = os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage2.yaml")

# What each section runs: (full, --quick)
SETTINGS = {
    "toy_iters": ((300, 150), (12, 6)),
    "toy_val": (100, 8),
    "infer_size": ((800, 1333), (320, 480)),
    "infer_batches": ((1, 8), (1, 2)),
    "step_size": ((800, 1333), (256, 384)),
    "step_batch": (4, 1),
    "repeat": (5, 1),
}


class Table:
    """Rows of (section, setting, result) printed as a Markdown table and kept as JSON."""

    def __init__(self):
        self.rows = []

    def add(self, section, setting, result):
        self.rows.append({"section": section, "setting": setting, "result": result})
        print(f"| {section} | {setting} | {result} |", flush=True)

    def markdown(self):
        lines = ["| section | setting | result |", "|---|---|---|"]
        lines += [f"| {r['section']} | {r['setting']} | {r['result']} |" for r in self.rows]
        return "\n".join(lines)


def memory_reset(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_peak(device):
    """Peak memory in GB: allocated CUDA memory since the last reset, else this process's RSS."""
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 1024**3:.2f} GB allocated"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB peak RSS"


def run(cmd, log, env=None, timeout=None):
    """Run ``cmd`` with its output in ``log``; returns the exit code."""
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout
        )
    return proc.returncode


def tail(log, n=3):
    with open(log) as f:
        lines = [line.strip() for line in f if line.strip()]
    return " / ".join(lines[-n:])[-300:]


# ---- sections --------------------------------------------------------------------------------
def section_tests(args, table):
    env = dict(os.environ, DETR_TEST_DEVICE=args.device)
    log = os.path.join(args.out, "tests.log")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    cmd += ["tests/modeling", "tests/engine", "tests/export"]
    rc = run(cmd, log, env=env)
    summary = [line for line in open(log) if re.search(r"\d+ (passed|failed)", line)]
    table.add(
        "tests",
        f"modeling, engine, export on {args.device}",
        f"rc {rc}: " + (summary[-1].strip() if summary else tail(log)),
    )


def read_metrics(path):
    """The JSON lines of a Detectron2 metrics.json."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def toy_stage(args, stage, precision, out_dir, iters, weights=None):
    config = TOY1 if stage == 1 else TOY2
    opts = [
        "MODEL.DEVICE", args.device,
        "OUTPUT_DIR", out_dir,
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", f"({int(iters * 0.86)},)",
        "SOLVER.WARMUP_ITERS", str(min(100, iters // 3)),
        "SOLVER.CHECKPOINT_PERIOD", str(iters),
        "SOLVER.TIME_BUDGET_MINUTES", "0.0",
        "SOLVER.AMP.ENABLED", str(precision != "fp32"),
        "DATASETS.TOY.ROOT", os.path.join(args.out, "toy_data"),
        "DATASETS.TOY.NUM_VAL", str(args.toy_val),
        "TEST.EVAL_PERIOD", str(iters) if stage == 2 else "0",
    ]  # fmt: skip
    opts += ["SOLVER.AMP.PRECISION", AMP[precision][0]] if AMP[precision] else []
    opts += ["MODEL.DETR.FROZEN_WEIGHTS", weights] if weights else []
    log = out_dir + ".log"
    start = time.perf_counter()
    rc = run([sys.executable, "tools/train_net.py", "--config-file", config, *opts], log)
    seconds = time.perf_counter() - start
    metrics = read_metrics(os.path.join(out_dir, "metrics.json")) if rc == 0 else []
    losses = [v for m in metrics for k, v in m.items() if k.startswith("loss") or k == "total_loss"]
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    pq = next((m["panoptic_seg/PQ"] for m in reversed(metrics) if "panoptic_seg/PQ" in m), None)
    return rc, seconds, finite, pq, log


def section_toy(args, table):
    it1, it2 = args.toy_iters
    for precision in PRECISIONS:
        base = os.path.join(args.out, f"toy_{precision}")
        rc1, s1, ok1, _, log1 = toy_stage(args, 1, precision, base + "_stage1", it1)
        if rc1:
            table.add("toy", f"stage 1, {precision} AMP", f"FAILED (rc {rc1}): {tail(log1)}")
            continue
        weights = os.path.join(base + "_stage1", "model_final.pth")
        rc2, s2, ok2, pq, log2 = toy_stage(args, 2, precision, base + "_stage2", it2, weights)
        if rc2:
            table.add("toy", f"stage 2, {precision} AMP", f"FAILED (rc {rc2}): {tail(log2)}")
            continue
        pq_text = "no PQ" if pq is None else f"PQ {pq:.1f}"
        table.add(
            "toy",
            f"{it1} + {it2} iterations, {precision} AMP",
            f"{s1:.0f} s + {s2:.0f} s, losses finite: {ok1 and ok2}, {pq_text}",
        )
        args.toy_stage2_weights.setdefault(precision, os.path.join(base + "_stage2"))


def section_inference(args, table):
    h, w = args.infer_size
    for precision in PRECISIONS:
        cfg = build_cfg(
            STAGE2_R50,
            opts=["MODEL.DETR.TEST.PRECISION", precision, "MODEL.DETR.TEST.INSTANCE_ON", False],
            device=args.device,
        )
        for batch in args.infer_batches:
            setting = f"R-50 {h}x{w}, batch {batch}, 55 kept, {precision}"
            try:
                model = build_eval_model(cfg)
                force_kept_queries(model.detr.class_embed, 55)
                inputs = [{"image": fake_image(h, w, args.device, seed=i)} for i in range(batch)]
                memory_reset(args.device)
                t, _ = timed(lambda: model(inputs), warmup=1, repeat=args.repeat)
                table.add(
                    "inference", setting, f"{batch / t:.2f} images/s, {memory_peak(args.device)}"
                )
            except Exception as e:  # a row of the table, not the end of the check
                table.add("inference", setting, f"FAILED: {type(e).__name__}: {e}"[:300])
            finally:
                model = None


def section_train_step(args, table):
    from bench_train_step import make_batch, step_time

    h, w = args.step_size
    batch_size = args.step_batch
    for precision in PRECISIONS:
        amp = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}[precision]
        try:
            cfg1 = build_cfg(STAGE1_R50, opts=["MODEL.MASK_HEAD.NAME", ""], device=args.device)
            batch = make_batch(batch_size, h, w, 10, cfg1.MODEL.DETR.NUM_CLASSES, args.device)
            memory_reset(args.device)
            t1, _, model1, loss1 = step_time(cfg1, batch, amp, args.repeat, args.device)
            mem1 = memory_peak(args.device)
            ckpt = os.path.join(args.out, "r50_stage1.pth")
            torch.save({"model": model1.state_dict()}, ckpt)
            model1 = None
            cfg2 = build_cfg(
                STAGE2_R50, opts=["MODEL.DETR.FROZEN_WEIGHTS", ckpt], device=args.device
            )
            memory_reset(args.device)
            t2, _, _, loss2 = step_time(cfg2, batch, amp, args.repeat, args.device)
            mem2 = memory_peak(args.device)
        except Exception as e:
            table.add("train step", f"R-50 batch {batch_size}, {precision}", f"FAILED: {e}"[:300])
            continue
        setting = f"R-50 {h}x{w}, batch {batch_size}, {precision} AMP"
        table.add("train step", f"stage 1, {setting}", f"{t1:.3f} s/iter, {mem1}, loss {loss1:.2f}")
        table.add("train step", f"stage 2, {setting}", f"{t2:.3f} s/iter, {mem2}, loss {loss2:.2f}")


def section_export(args, table):
    stage2 = args.toy_stage2_weights.get("fp32")
    if stage2 is None:
        table.add("export", "toy stage 2", "skipped: no fp32 toy stage-2 model (section toy)")
        return
    image_dir = os.path.join(args.out, "toy_data", "val", "images")  # the toy set's layout
    images = [os.path.join(image_dir, f) for f in sorted(os.listdir(image_dir))[:2]]
    for fmt in ("torchscript", "onnx"):
        out = os.path.join(args.out, f"export_{fmt}")
        cmd = [sys.executable, "tools/export_model.py", "--config-file", TOY2, "--format", fmt]
        cmd += ["--output", out, "MODEL.WEIGHTS", os.path.join(stage2, "model_final.pth")]
        cmd += [
            "MODEL.DEVICE",
            args.device,
            "DATASETS.TOY.ROOT",
            os.path.join(args.out, "toy_data"),
        ]
        rc = run(cmd, out + ".log")
        if rc:
            table.add(
                "export", f"{fmt} from {args.device}", f"FAILED (rc {rc}): {tail(out + '.log')}"
            )
            continue
        run_cmd = [sys.executable, "tools/run_exported.py", "--model", out, "--input", *images]
        run_cmd += ["--output", out + "_run"]
        run_cmd += ["--device", "cpu"] if fmt == "torchscript" else []
        rc = run(run_cmd, out + "_run.log")
        table.add(
            "export",
            f"{fmt} from {args.device}, run on cpu",
            f"export: {tail(out + '.log', 1)}; run: rc {rc}",
        )


SECTIONS = {
    "tests": section_tests,
    "toy": section_toy,
    "inference": section_inference,
    "train_step": section_train_step,
    "export": section_export,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small settings (the CPU dry run)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--skip", nargs="*", default=[], choices=sorted(SECTIONS))
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu --quick for the dry run)")
    for key, values in SETTINGS.items():
        setattr(args, key, values[1] if args.quick else values[0])
    args.out = args.out or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(args.out, exist_ok=True)
    args.toy_stage2_weights = {}
    if args.device.startswith("cuda"):
        name = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    else:
        name = f"CPU, {os.cpu_count()} cores"
    print(f"GPU check on {name}, torch {torch.__version__}; work folder {args.out}")
    table = Table()
    print("| section | setting | result |\n|---|---|---|")
    start = time.perf_counter()
    for section, fn in SECTIONS.items():
        if section in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            fn(args, table)
        except Exception:
            table.add(section, "whole section", "FAILED: " + traceback.format_exc(limit=2)[-300:])
        print(f"({section}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nGPU check on {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s")
    print(table.markdown())
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"device": name, "rows": table.rows}, f, indent=1)


if __name__ == "__main__":
    main()
