#!/usr/bin/env python
"""R-50 DETR panoptic: exported models (TorchScript, ONNX Runtime) beside the eager model, batch 1.

    python benchmarks/bench_exported.py [--sizes 800x1088 800x1333] [--kept 10] [--threads 2]
        [--repeat 3] [--formats eager torchscript onnx onnx-all]

One process, same machine, same weights and input. Each row is model + panoptic post-processing on
an image already at the test size (DETR's merge): eager = ``DetrPanoptic.forward`` (instances off);
torchscript = ``model.ts`` + the shared merge on torch tensors; onnx = ``model.onnx`` in ONNX
Runtime's CPU provider + the same merge on numpy ("kept": masks for the kept queries only;
"onnx-all": the fixed-shape graph that computes masks for every query, for TensorRT). Random weights
with a hook on the class head so that exactly --kept queries pass the threshold (traced into the
exported graphs too). Median of --repeat runs after one warm-up; the ratio is to eager.
"""

import argparse
import os
import tempfile

import torch
from common import build_cfg, build_eval_model, fake_image, force_kept_queries, machine_line, timed

from detr_panoptic_d2.export import export_onnx, export_torchscript
from detr_panoptic_runtime import ExportedPanopticModel
from detr_panoptic_runtime.deploy import save_deploy

FORMATS = ("eager", "torchscript", "onnx", "onnx-all")


def export_all(cfg, model, folder, formats, sample, threads):
    """Export folders for the requested formats (deploy.json written as export_model does)."""
    from detr_panoptic_d2.export import deploy_metadata

    runners = {}
    for name in formats:
        if name == "eager":
            continue
        fmt, mode = ("torchscript", "kept") if name == "torchscript" else ("onnx", "kept")
        if name == "onnx-all":
            mode = "all"
        out = os.path.join(folder, name)
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "model.ts" if fmt == "torchscript" else "model.onnx")
        if fmt == "torchscript":
            export_torchscript(model, sample, path, mode)
        else:
            export_onnx(model, sample, path, mode)
        save_deploy(deploy_metadata(cfg, model, fmt, mode), out)
        runners[name] = ExportedPanopticModel(out, threads=threads)
    return runners


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["800x1088", "800x1333"])
    p.add_argument("--kept", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = build_cfg(opts=["MODEL.DETR.TEST.INSTANCE_ON", "False"])
    model = build_eval_model(cfg)
    force_kept_queries(model.detr.class_embed, args.kept, class_id=0)
    print(machine_line("cpu"), f"| onnxruntime {__import__('onnxruntime').__version__}")
    sample = fake_image(*(int(v) for v in args.sizes[0].split("x"))).to(
        torch.uint8
    )  # traces at size 1
    with tempfile.TemporaryDirectory() as folder:
        # ONNX Runtime with as many intra-op threads as torch
        runners = export_all(cfg, model, folder, args.formats, sample, args.threads)
        header = f"{'input':>9} | " + " | ".join(f"{f:>21}" for f in args.formats)
        print(f"R-50, {args.kept} kept queries, median of {args.repeat} (s, ratio to eager)")
        print(header)
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            image = fake_image(h, w).to(torch.uint8)
            times = {}
            for name in args.formats:
                if name == "eager":
                    inputs = [{"image": image, "height": h, "width": w}]
                    fn = lambda: model(inputs)  # noqa: E731
                else:
                    runner, x = runners[name], image.numpy()
                    fn = lambda runner=runner, x=x: runner.predict_input(x, (h, w))  # noqa: E731
                times[name], _ = timed(fn, warmup=1, repeat=args.repeat)
            base = times.get("eager")
            cells = [
                f"{t:>7.2f} s" + (f" ({t / base:.2f})" if base else "") for t in times.values()
            ]
            print(f"{size:>9} | " + " | ".join(f"{c:>21}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
