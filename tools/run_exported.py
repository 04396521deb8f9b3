#!/usr/bin/env python
"""Run an exported DETR panoptic model (tools/export_model.py) on images, without Detectron2.

    python tools/run_exported.py --model DIR --input IMG_OR_FOLDER [...] --output OUT [--visualize]
        [--threshold T] [--merge detr|maskformer] [--device cpu|cuda] [--threads N]

Needs numpy, Pillow and torch (model.ts) or onnxruntime (model.onnx). Applies the export's test
resize and panoptic merge (deploy.json) and writes, per image, OUT/<stem>.png (segment ids as
panopticapi's id2rgb, 0 = void, at the image's size) and OUT/<stem>.json ({"segments_info": [{"id",
"category_id" (contiguous), "isthing", "score", "area", "dataset_category_id"}]}); with --visualize
also OUT/<stem>_overlay.png.

<stem>: the input's path relative to the common parent folder of all inputs, extension dropped
(a/1.jpg and b/1.jpg → OUT/a/1.png and OUT/b/1.png; one folder's images → OUT/<file stem>.png);
names that differ only by extension keep it (OUT/1.jpg.png, OUT/1.png.png). Images are read as
training reads them (EXIF orientation, 16-bit scaled to 8 bits, at most --max-image-pixels pixels);
unreadable files are skipped, named, and make the exit status 1. ONNX Runtime providers that are
not available (it falls back to the CPU) are named in a warning.
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
    read_image,
    write_json,
    write_png,
)
from detr_panoptic_runtime.image_io import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from detr_panoptic_runtime.inputs import list_inputs, output_stems  # noqa: E402
from detr_panoptic_runtime.outputs import default_colors  # noqa: E402


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
    parser.add_argument(
        "--input", required=True, nargs="+", help="images, folders or glob patterns"
    )
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
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse larger images (decompression-bomb guard; 0: no limit; default: %(default)s, "
        "as training's INPUT.MAX_IMAGE_PIXELS)",
    )
    args = parser.parse_args(argv)
    if args.max_image_pixels < 0:
        parser.error(f"--max-image-pixels must be >= 0 (0: no limit), got {args.max_image_pixels}")
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
    if model.format == "onnx" and args.providers:
        missing = [p for p in args.providers.split(",") if p not in model.session.get_providers()]
        if missing:
            print(
                f"warning: --providers {','.join(missing)} not available, ONNX Runtime runs on "
                f"{','.join(model.session.get_providers())}",
                file=sys.stderr,
            )
    meta = model.meta
    names, dataset_ids = meta["class_names"], meta["dataset_category_ids"]
    colors = meta.get("colors") or default_colors(meta["num_classes"])
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    failed = []
    for path, stem in progress(list(zip(files, output_stems(files)))):
        try:  # errors name the file
            image = read_image(path, max_pixels=args.max_image_pixels)
        except (OSError, ValueError) as e:
            print(f"skipped: {e}", file=sys.stderr)
            failed.append(path)
            continue
        ids, info = model(image)
        for s in info:
            s["dataset_category_id"] = dataset_ids[s["category_id"]]
        stem = os.path.join(args.output, stem)
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        write_png(ids, stem + ".png")
        write_json(info, stem + ".json", file_name=os.path.basename(path))
        if args.visualize:
            from PIL import Image

            picture = draw_overlay(image, ids, info, names, colors)
            Image.fromarray(picture).save(stem + "_overlay.png")
    took = time.perf_counter() - start
    print(
        f"{meta['format']} ({meta['mask_queries']} masks, {model.panoptic['merge']} merge): "
        f"{len(files) - len(failed)} image(s) in {took:.1f} s → {args.output}"
    )
    if failed:
        print(f"{len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
