#!/usr/bin/env python
"""R-50 DETR panoptic inference (model + post-processing), batch 1: latency, GFLOP/s, peak memory;
with --reference-repo, side by side with the original DETR on the same weights and image, and their
outputs compared.

    python benchmarks/bench_inference.py [--reference-repo PATH_TO_ORIGINAL_DETR_CHECKOUT]
        [--sizes 800x1088] [--kept 55] [--precision fp32 bf16] [--threads 2] [--repeat 5]
        [--device cpu] [--breakdown]

Workload (as benchmarks/compare_original.py builds it): a smooth test image with a few shapes; the
original's model with random weights, its BatchNorm statistics and norms randomized and its mask
head made query-specific, converted by the plugin's converter and loaded into the plugin (without
--reference-repo: the plugin's own random weights); a hook on both class heads makes the first
--kept queries predict fixed classes, things and stuff, with probability ~1 (random weights keep
none), the others no-object; a hook on both decoders gives each query its own fixed shift
(compare_original.distinct_queries: random decoders make all queries' masks nearly equal, and the
argmax a matter of float rounding). The plugin runs at each --precision
(MODEL.DETR.TEST.PRECISION); the original runs as it is (float32).

Latency: median of --repeat runs after 2 warm-up runs. GFLOP: matmul and convolution FLOPs of one
run (benchmarks/common.py FlopCounter), GFLOP/s = GFLOP / latency, beside the machine's measured
peak in the same run (a 3x3 convolution and a matmul probe per dtype). Memory: peak resident set of
a fresh process per measurement (CUDA: torch.cuda.max_memory_allocated). Agreement: share of pixels
whose panoptic segment corresponds (compare_original.panoptic_agreement), plugin vs original, and
each precision vs the plugin's fp32.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from common import (
    build_cfg,
    count_flops,
    machine_line,
    peak_gflops,
    peak_line,
    peak_rss_gb,
    timed,
)
from compare_original import (
    distinct_queries,
    force_classes,
    panoptic_agreement,
    randomize_,
    test_image,
)
from reference import reference_env

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def forced_dataset_ids(kept):
    """COCO panoptic category ids of the first ``kept`` queries: two things for each stuff class."""
    from detr_panoptic_d2.checkpoint import contiguous_id_map

    id_map = contiguous_id_map("coco_panoptic")
    things = [d for d in id_map if d <= 90]
    stuff = [d for d in id_map if d > 90]
    return [
        (things if i % 3 else stuff)[(i * 7) % len(things if i % 3 else stuff)] for i in range(kept)
    ]


def _cfg(device, precision="fp32"):
    import detectron2.data.datasets  # noqa: F401  (builtin COCO panoptic metadata: the thing/stuff split)

    cfg = build_cfg(
        opts=["MODEL.DETR.TEST.INSTANCE_ON", "False", "MODEL.DETR.TEST.PRECISION", precision],
        device=device,
    )
    cfg.DATASETS.TEST = ("coco_2017_val_panoptic",)
    return cfg


def measure_original(size, args, weights_out, result_out):
    """The original (DETRsegm + PostProcessPanoptic) in this process; its converted weights and
    panoptic result are written for the plugin's run and the comparison."""
    import io

    from panopticapi.utils import rgb2id
    from PIL import Image
    from reference import OriginalDetrPanoptic

    from detr_panoptic_d2.checkpoint import convert_detr_state_dict

    cfg = _cfg(args.device)
    original = OriginalDetrPanoptic(cfg, device=args.device)
    randomize_(original.model)
    state, _ = convert_detr_state_dict(original.model.state_dict(), "coco_panoptic")
    torch.save({k: v.cpu() for k, v in state.items()}, weights_out)
    force_classes(original.class_embed, forced_dataset_ids(args.kept))
    distinct_queries(original.model.detr.transformer, args.query_spread)
    image = test_image(*size).to(args.device)

    def run():
        with torch.no_grad():
            return original(image)

    return _measure(run, args, result_out, lambda res: _original_result(res, rgb2id, Image, io))


def _original_result(res, rgb2id, image_module, io):
    (pan,) = res
    ids = rgb2id(np.asarray(image_module.open(io.BytesIO(pan["png_string"])).convert("RGB")))
    segs = [(s["id"], s["category_id"]) for s in pan["segments_info"]]
    return ids, segs


def measure_plugin(size, precision, args, weights, result_out):
    from detectron2.modeling import build_model

    from detr_panoptic_d2.checkpoint import contiguous_id_map

    cfg = _cfg(args.device, precision)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if weights:
        model.load_state_dict(torch.load(weights, map_location=args.device), strict=True)
    id_map = contiguous_id_map("coco_panoptic")
    to_coco = {v: k for k, v in id_map.items()}
    force_classes(model.detr.class_embed, [id_map[d] for d in forced_dataset_ids(args.kept)])
    distinct_queries(model.detr.transformer, args.query_spread)
    h, w = size
    inputs = [{"image": test_image(h, w).to(args.device), "height": h, "width": w}]

    def run():
        return model(inputs)

    def result(res):
        ids, info = res[0]["panoptic_seg"]
        return ids.cpu().numpy(), [(s["id"], to_coco[s["category_id"]]) for s in info]

    out = _measure(run, args, result_out, result)
    if args.breakdown:
        out["breakdown"] = breakdown(model, inputs, args)
    return out


def breakdown(model, inputs, args):
    """Seconds (median) and GFLOP of the parts of one inference: backbone, the rest of the DETR body
    (input projection, transformer, heads), the mask head on the kept queries, and the rest (image
    normalization and padding, query selection, the panoptic merge; the difference of medians, so
    noisy)."""
    with torch.inference_mode():
        plan = model.prepare_inference()
        backbone = plan.backbone or model.detr.backbone
        images, mask = model.preprocess_image(inputs)
        x = images.tensor.to(dtype=plan.dtype, memory_format=torch.channels_last)
        outputs, features = model.run_body(images.tensor, mask)
        q = model.postprocessor.select(outputs["pred_logits"][0]).needs_mask.nonzero()[:, 0]
        head_kwargs = plan.mask_head_kwargs()
        parts = {
            "backbone": lambda: backbone(x),
            "body": lambda: model.run_body(images.tensor, mask),
            "mask head": lambda: model.mask_head(features, torch.zeros_like(q), q, **head_kwargs),
            "total": lambda: model(inputs),
        }
        res = {}
        for name, fn in parts.items():
            t, _ = timed(fn, repeat=args.repeat)
            res[name] = (t, count_flops(fn) / 1e9)
    body, total = res.pop("body"), res.pop("total")
    res["transformer + heads"] = (body[0] - res["backbone"][0], body[1] - res["backbone"][1])
    res["the rest"] = (
        total[0] - body[0] - res["mask head"][0],
        total[1] - body[1] - res["mask head"][1],
    )
    res["rows"] = (int(q.numel()), 0)
    return res


def _measure(run, args, result_out, to_result):
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res = run()
    t, times = timed(run, repeat=args.repeat)
    out = {"latency_s": t, "times": times, "peak_rss_gb": peak_rss_gb()}
    if cuda:
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    out["gflop"] = count_flops(run) / 1e9
    ids, segs = to_result(res)
    np.savez(result_out, ids=ids, segs=np.asarray(segs, dtype=np.int64).reshape(-1, 2))
    return out


def run_child(kind, size, precision, args, weights, result_out):
    cmd = [
        sys.executable,
        os.path.join(HERE, "bench_inference.py"),
        "--child",
        f"{kind},{size},{precision}",
        "--kept",
        str(args.kept),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
        "--result-out",
        result_out,
        "--query-spread",
        str(args.query_spread),
    ]
    if weights:
        cmd += ["--weights", weights]
    if args.breakdown:
        cmd += ["--breakdown"]
    env = reference_env(args.reference_repo) if kind == "original" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(HERE), env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"measurement {kind} {size} {precision} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(lines[-1][7:])
    r["mem_gb"] = r.get("cuda_peak_gb", r["peak_rss_gb"])
    return r


def agreement(a, b):
    """Panoptic agreement of two saved results; b's void (id 0, no segment) is told apart from the
    original's first segment (id 0) by category, as compare_original does."""
    ra, rb = np.load(a), np.load(b)
    cats_a = {int(i): int(c) for i, c in ra["segs"]}
    cats_b = {0: -1, **{int(i): int(c) for i, c in rb["segs"]}}
    return panoptic_agreement(ra["ids"], cats_a, rb["ids"], cats_b)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["800x1088"])
    p.add_argument("--kept", type=int, default=55)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--reference-repo", default=None)
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the parts: backbone, transformer + heads, mask head, the rest",
    )
    p.add_argument(
        "--query-spread",
        type=float,
        default=2.0,
        help="per-query shift of the decoder output, as compare_original.py (0: near-identical "
        "queries, the argmax decided by float rounding)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:  # one measurement in this fresh process, printed as JSON
        kind, size, precision = args.child.split(",")
        hw = tuple(map(int, size.split("x")))
        if kind == "original":
            r = measure_original(hw, args, args.weights, args.result_out)
        else:
            r = measure_plugin(hw, precision, args, args.weights, args.result_out)
        print("RESULT " + json.dumps(r))
        return
    print(machine_line(args.device))
    dtypes = [DTYPES[x] for x in dict.fromkeys(["fp32", *args.precision])]
    peaks = peak_gflops(args.device, dtypes)
    print(peak_line(peaks))
    mem = "CUDA max allocated" if args.device.startswith("cuda") else "peak RSS of the process"
    print(
        f"R-50 panoptic, batch 1, {args.kept} kept queries, {args.threads} threads, model + "
        f"post-processing; memory = {mem}"
    )
    header = (
        f"{'size':>9} | {'precision':>9} | {'latency s':>9} | {'images/s':>8} | "
        f"{'peak mem GB':>11} | {'GFLOP':>6} | {'GFLOP/s (peak)':>14}"
    )
    if args.reference_repo:
        header += (
            f" | {'original s':>10} | {'orig. GFLOP/s':>13} | {'orig. mem GB':>12} | "
            f"{'latency ratio':>13} | {'agreement':>9}"
        )
    header += f" | {'vs fp32':>7}"
    print(header)
    tmp = tempfile.mkdtemp()
    for size in args.sizes:
        weights, o = None, None
        ref_result = os.path.join(tmp, f"original_{size}.npz")
        if args.reference_repo:
            weights = os.path.join(tmp, f"weights_{size}.pth")
            o = run_child("original", size, "fp32", args, weights, ref_result)
        fp32_result = None
        for precision in args.precision:
            result = os.path.join(tmp, f"plugin_{size}_{precision}.npz")
            r = run_child("plugin", size, precision, args, weights, result)
            peak = peaks[str(DTYPES[precision]).replace("torch.", "")][0]
            rate = f"{r['gflop'] / r['latency_s']:.0f} ({peak:.0f})"
            row = (
                f"{size:>9} | {precision:>9} | {r['latency_s']:>9.3f} | "
                f"{1 / r['latency_s']:>8.2f} | {r['mem_gb']:>11.2f} | {r['gflop']:>6.1f} | "
                f"{rate:>14}"
            )
            if o is not None:
                row += (
                    f" | {o['latency_s']:>10.3f} | {o['gflop'] / o['latency_s']:>13.0f} | "
                    f"{o['mem_gb']:>12.2f} | {r['latency_s'] / o['latency_s']:>13.3f} | "
                    f"{agreement(ref_result, result):>9.4f}"
                )
            if fp32_result is None and precision == "fp32":
                fp32_result = result
            vs = "" if fp32_result in (None, result) else f"{agreement(fp32_result, result):.4f}"
            row += f" | {vs:>7}"
            print(row, flush=True)
            if "breakdown" in r:
                bd = r.pop("breakdown")
                rows = bd.pop("rows")[0]
                print(
                    "    "
                    + "; ".join(
                        f"{name} {t:.3f} s, {g:.0f} GFLOP ({g / t:.0f} GFLOP/s)"
                        if g > 0.5
                        else f"{name} {t:.3f} s"
                        for name, (t, g) in bd.items()
                    )
                    + f" (mask head on {rows} rows)"
                )


if __name__ == "__main__":
    main()
