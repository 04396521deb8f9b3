#!/usr/bin/env python
"""R-50 DETR panoptic inference: latency (model + post-processing) and peak memory, batch 1.

    python benchmarks/bench_inference.py [--sizes 800x1088 800x1333] [--kept 10] [--threads 2]
        [--device cpu|cuda] [--amp none bf16 fp16] [--reference-repo PATH_TO_ORIGINAL_DETR_CHECKOUT]

Random weights with a hook on the class head so that exactly --kept queries pass the panoptic threshold
(what a trained model keeps on a typical COCO image; random weights would keep none). Latency is the median
of --repeat runs after 2 warm-up runs, under torch.inference_mode(). Peak memory is measured in a fresh
process per size (CPU: peak resident set size of the process; CUDA: torch.cuda.max_memory_allocated).
With --reference-repo, the original DETR implementation (a local checkout, not shipped here) runs on the
same weights and input, and the ratio plugin / original is printed.
"""

import argparse
import json
import os
import subprocess
import sys

import torch
from common import (
    build_cfg,
    build_eval_model,
    fake_image,
    force_kept_queries,
    machine_line,
    peak_rss_gb,
    timed,
)
from reference import reference_env

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(impl, size, kept, device, amp, repeat, reference_repo=None):
    """Latency and peak memory of one implementation ("plugin" or "original") in this process."""
    h, w = size
    cfg = build_cfg(opts=["MODEL.DETR.TEST.INSTANCE_ON", "False"], device=device)
    image = fake_image(h, w, device)
    if impl == "plugin":
        model = build_eval_model(cfg)
        force_kept_queries(
            model.detr.class_embed, kept, class_id=0
        )  # contiguous 0 = COCO id 1 (person)
        inputs = [{"image": image, "height": h, "width": w}]
        forward = lambda: model(inputs)  # noqa: E731
    else:
        from reference import OriginalDetrPanoptic

        model = OriginalDetrPanoptic(cfg, device=device)
        force_kept_queries(model.class_embed, kept, class_id=1)
        forward = lambda: model(image)  # noqa: E731
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_gb()

    def run():
        with (
            torch.inference_mode(),
            torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None),
        ):
            return forward()

    run()
    t, _ = timed(run, repeat=repeat)
    res = {"latency_s": t, "peak_rss_gb": peak_rss_gb(), "rss_before_gb": rss_before}
    if device.startswith("cuda"):
        res["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return res


def run_child(impl, size, amp, args):
    cmd = [
        sys.executable,
        os.path.join(HERE, "bench_inference.py"),
        "--child",
        f"{impl},{size},{amp}",
        "--kept",
        str(args.kept),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
    ]
    if args.reference_repo:
        cmd += ["--reference-repo", args.reference_repo]
    env = reference_env(args.reference_repo) if impl == "original" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE), env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"measurement {impl} {size} {amp} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(lines[-1][7:])
    r["mem_gb"] = r.get("cuda_peak_gb", r["peak_rss_gb"])
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["800x1088", "800x1333"])
    p.add_argument("--kept", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--reference-repo", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:  # one measurement in this fresh process, printed as JSON
        impl, size, amp = args.child.split(",")
        h, w = map(int, size.split("x"))
        print(
            "RESULT "
            + json.dumps(
                measure(impl, (h, w), args.kept, args.device, amp, args.repeat, args.reference_repo)
            )
        )
        return
    print(machine_line(args.device))
    print(
        f"R-50 panoptic, batch 1, {args.kept} kept queries, {args.threads} threads; memory = "
        + ("CUDA max allocated" if args.device.startswith("cuda") else "peak RSS of the process")
    )
    header = f"{'size':>9} | {'amp':>4} | {'latency s':>9} | {'images/s':>8} | {'peak mem GB':>11}"
    if args.reference_repo:
        header += f" | {'original s':>10} | {'orig. mem GB':>12} | {'latency ratio':>13} | {'mem ratio':>9}"
    print(header)
    for amp in args.amp:
        for size in args.sizes:
            r = run_child("plugin", size, amp, args)
            row = f"{size:>9} | {amp:>4} | {r['latency_s']:>9.3f} | {1 / r['latency_s']:>8.2f} | {r['mem_gb']:>11.2f}"
            if args.reference_repo:
                o = run_child("original", size, amp, args)
                row += (
                    f" | {o['latency_s']:>10.3f} | {o['mem_gb']:>12.2f} | {r['latency_s'] / o['latency_s']:>13.2f}"
                    f" | {r['mem_gb'] / o['mem_gb']:>9.2f}"
                )
            print(row, flush=True)


if __name__ == "__main__":
    main()
