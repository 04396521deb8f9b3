#!/usr/bin/env python
"""Memory of one large photo through the model: peak resident memory above the model's own
footprint, with instance masks at the full output size (MODEL.DETR.TEST.INSTANCE_ON).

    python benchmarks/bench_large_image.py [--size 4000x6000] [--kept 100] [--threads 2]
        [--config configs/COCO-PanopticSegmentation/detr_R_50_stage2.yaml] [--resize bool float]

Workload: the R-50 stage-2 config with random weights (MODEL.WEIGHTS ""), a random photo of
--size (H x W) resized as Detectron2's test loader does (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST:
800 x 1200 for 4000 x 6000) with "height" / "width" asking for results at the photo's size; a hook
on the class head (benchmarks/common.py force_kept_queries) makes the first --kept queries predict a
thing class with probability ~1, so that --kept instance masks are made at the photo's size.

Each --resize runs in a fresh process: the model is built and run once on a small image (warm-up),
its resident memory (VmRSS) is the baseline, the peak (VmHWM) is reset (/proc/self/clear_refs) and
the large image is run; the figure is peak - baseline. "bool": the plugin's resize (bool masks a
few at a time); "float": the earlier formulation (every kept mask at the output size in float32 at
once), for comparison. The output's own (kept, H, W) bool masks are part of the figure (printed
beside it).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import COCO_CONFIG, build_cfg, build_eval_model, force_kept_queries, machine_line

HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    """Reset VmHWM to the current resident size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _float_resize(masks, out_size, index=None, chunk_pixels=None):
    """The earlier formulation of detr_instances' resize (for --resize float): the kept rows
    binarized, then every one at the output size in float32 at once."""
    masks = masks if index is None else masks[index]
    masks = masks if masks.dtype == torch.bool else masks > 0
    return F.interpolate(masks[:, None].float(), size=out_size, mode="nearest")[:, 0] > 0.5


def _inputs(cfg, h, w, seed=0):
    """A random uint8 photo of h x w, resized as Detectron2's test loader does."""
    from detectron2.data import transforms as T

    g = torch.Generator().manual_seed(seed)
    photo = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(photo).apply_image(photo)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()
    return [{"image": tensor.to(cfg.MODEL.DEVICE), "height": h, "width": w}]


def child(args):
    """One measurement in this (fresh) process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    from detr_panoptic_d2.modeling import postprocess

    if args.child == "float":
        postprocess.resize_masks_nearest = _float_resize
    cfg = build_cfg(args.config, opts=["MODEL.DETR.TEST.INSTANCE_ON", "True"], device="cpu")
    model = build_eval_model(cfg)
    num_queries = cfg.MODEL.DETR.NUM_OBJECT_QUERIES
    if args.kept > num_queries:
        raise SystemExit(f"--kept {args.kept} > MODEL.DETR.NUM_OBJECT_QUERIES {num_queries}")
    force_kept_queries(model.detr.class_embed, args.kept, class_id=0)  # COCO 0: person, a thing
    h, w = args.size
    small = _inputs(cfg, max(64, h // 20), max(64, w // 20), seed=1)
    big = _inputs(cfg, h, w)
    with torch.no_grad():
        model(small)  # warm-up: allocator pools, derived inference weights
    baseline = _status_kb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        res = model(big)[0]
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    masks = res["instances"].pred_masks
    print(
        json.dumps(
            {
                "baseline_gb": baseline / 1024**2,
                "above_gb": (peak - baseline) / 1024**2,
                "peak_reset": reset,
                "seconds": seconds,
                "instances": len(res["instances"]),
                "mask_shape": list(masks.shape),
                "masks_gb": masks.numel() * masks.element_size() / 1024**3,
                "processed": list(big[0]["image"].shape[-2:]),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--size", default="4000x6000", help="photo H x W")
    p.add_argument("--kept", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", default=COCO_CONFIG)
    p.add_argument("--resize", nargs="+", default=["bool"], choices=("bool", "float"))
    p.add_argument("--child", choices=("bool", "float"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.child:
        return child(args)
    print(machine_line())
    print(
        f"{os.path.relpath(args.config)}, random weights, photo {args.size[0]}x{args.size[1]}, "
        f"{args.kept} kept queries (instance masks at the photo's size), {args.threads} threads"
    )
    print(
        "resize | processed | instances | peak RSS above model (GB) | masks (GB) | model (GB) | s"
    )
    for mode in args.resize:
        cmd = [sys.executable, os.path.join(HERE, "bench_large_image.py"), "--child", mode]
        cmd += ["--size", "x".join(map(str, args.size)), "--kept", str(args.kept)]
        cmd += ["--threads", str(args.threads), "--config", args.config]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{mode} | FAILED: {proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        note = "" if r["peak_reset"] else " (peak not reset: includes the build)"
        print(
            f"{mode} | {r['processed'][0]}x{r['processed'][1]} | {r['instances']} | "
            f"{r['above_gb']:.2f}{note} | {r['masks_gb']:.2f} | {r['baseline_gb']:.2f} | "
            f"{r['seconds']:.1f}"
        )


if __name__ == "__main__":
    main()
