#!/usr/bin/env python
"""Run an exported DETR panoptic model (tools/export_model.py) on images, without Detectron2.

    python tools/run_exported.py --model DIR --input IMG_OR_FOLDER [...] --output OUT [--visualize]
        [--threshold T] [--merge detr|maskformer] [--device cpu|cuda] [--threads N]

Needs numpy, Pillow and torch (model.ts) or onnxruntime (model.onnx). Applies the export's test
resize and panoptic merge (deploy.json) and writes, per image, OUT/<stem>.png (segment ids as
panopticapi's id2rgb, 0 = void, at the image's size) and OUT/<stem>.json ({"segments_info": [{"id",
"category_id" (contiguous), "isthing", "score", "area", "dataset_category_id"}]}); with --visualize
also OUT/<stem>_overlay.png.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(HERE, "..", "detr_panoptic_runtime")):  # run from a checkout
    sys.path.insert(0, os.path.dirname(HERE))

from detr_panoptic_runtime import (  # noqa: E402
    ExportedPanopticModel,
    draw_overlay,
    write_json,
    write_png,
)
from detr_panoptic_runtime.outputs import default_colors  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(
                os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS)
            )
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"--input: no such file or folder: {p}")
    return files


def progress(items, desc="images"):
    """tqdm when it is installed and there is more than one item, else a plain counter on stderr."""
    if len(items) < 2:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        for i, item in enumerate(items):
            print(f"{desc}: {i + 1}/{len(items)}", file=sys.stderr, flush=True)
            yield item
        return
    yield from tqdm(items, desc=desc)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="export folder (deploy.json + model file)")
    parser.add_argument("--input", required=True, nargs="+", help="images or folders")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--visualize", action="store_true", help="also write <stem>_overlay.png")
    parser.add_argument("--threshold", type=float, help="override the exported threshold (higher)")
    parser.add_argument("--merge", choices=("detr", "maskformer"), help="override the merge")
    parser.add_argument("--device", help="TorchScript: device (default: the one it was traced on)")
    parser.add_argument("--threads", type=int, help="intra-op threads (torch / ONNX Runtime)")
    parser.add_argument(
        "--providers",
        help="ONNX Runtime execution providers, comma-separated (default: CPUExecutionProvider)",
    )
    args = parser.parse_args(argv)
    try:
        files = list_inputs(args.input)
    except FileNotFoundError as e:
        parser.error(str(e))
    if not files:
        parser.error(f"--input: no images in {args.input}")
    model = ExportedPanopticModel(
        args.model,
        device=args.device,
        threads=args.threads,
        threshold=args.threshold,
        merge=args.merge,
        providers=args.providers.split(",") if args.providers else None,
    )
    meta = model.meta
    names, dataset_ids = meta["class_names"], meta["dataset_category_ids"]
    colors = meta.get("colors") or default_colors(meta["num_classes"])
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    for path in progress(files):
        image, ids, info = model.predict_file(path)
        for s in info:
            s["dataset_category_id"] = dataset_ids[s["category_id"]]
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        write_png(ids, stem + ".png")
        write_json(info, stem + ".json", file_name=os.path.basename(path))
        if args.visualize:
            from PIL import Image

            picture = draw_overlay(image, ids, info, names, colors)
            Image.fromarray(picture).save(stem + "_overlay.png")
    took = time.perf_counter() - start
    print(
        f"{meta['format']} ({meta['mask_queries']} masks, {model.panoptic['merge']} merge): "
        f"{len(files)} image(s) in {took:.1f} s → {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
