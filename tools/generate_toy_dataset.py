"""Generate the toy panoptic data set, or a synthetic set in a real data set's layout, and
optionally draw some val ground truth.

Examples::

    python tools/generate_toy_dataset.py --root datasets/toy_panoptic --visualize 4
    python tools/generate_toy_dataset.py --root datasets/toy_panoptic_random --thing-colors random
    # a COCO-layout set under a DETECTRON2_DATASETS folder, read by detectron2's builtin names
    python tools/generate_toy_dataset.py --layout coco --root /tmp/d2_datasets \\
        --num-train 20 --num-val 10
    DETECTRON2_DATASETS=/tmp/d2_datasets python tools/train_net.py ... \\
        DATASETS.TEST '("coco_2017_val_panoptic",)'
"""

import argparse
import logging
import os

import numpy as np
from dataset_layouts import LAYOUTS, register_custom_panoptic, write_layout
from PIL import Image

from detr_panoptic_d2.data.scenes import THING_COLOR_MODES
from detr_panoptic_d2.data.toy_dataset import generate_toy_panoptic, register_toy_panoptic


def _visualize(name, vis_dir, count):
    """Draw the ground truth of the first ``count`` images of data set ``name`` into vis_dir."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    os.makedirs(vis_dir, exist_ok=True)
    for d in DatasetCatalog.get(name)[:count]:
        img = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        vis = Visualizer(img, MetadataCatalog.get(name), scale=2.0).draw_dataset_dict(d)
        stem = os.path.splitext(os.path.basename(d["pan_seg_file_name"]))[0]
        path = os.path.join(vis_dir, stem + ".png")
        vis.save(path)
        print("wrote", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layout",
        choices=("toy",) + LAYOUTS,
        default="toy",
        help="toy: the toy set (ROOT is its folder); coco / cityscapes / ade20k: "
        "that data set's layout under ROOT, a DETECTRON2_DATASETS folder; "
        "custom: a user's own COCO panoptic set in ROOT",
    )
    parser.add_argument(
        "--root",
        default=None,
        help="output folder (default: datasets/toy_panoptic for the toy set, datasets otherwise)",
    )
    parser.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="train images (default: 400 for the toy set, 20 otherwise)",
    )
    parser.add_argument(
        "--num-val",
        type=int,
        default=None,
        help="val images (default: 200 for the toy set, 10 otherwise)",
    )
    parser.add_argument("--min-size", type=int, default=128, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=192, help="largest image side (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--thing-colors",
        choices=THING_COLOR_MODES,
        default=None,
        help="class: each thing class in its own colour; random: a random colour "
        "per thing (only the shape tells the class). Default: class for the "
        "toy set, random otherwise",
    )
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if cached")
    parser.add_argument(
        "--visualize",
        type=int,
        default=0,
        metavar="N",
        help="draw the ground truth of N val images into ROOT/vis/ (toy and custom sets)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    toy = args.layout == "toy"
    root = args.root or ("datasets/toy_panoptic" if toy else "datasets")
    num_train = args.num_train if args.num_train is not None else (400 if toy else 20)
    num_val = args.num_val if args.num_val is not None else (200 if toy else 10)
    thing_colors = args.thing_colors or ("class" if toy else "random")
    size = (args.min_size, args.max_size)

    try:
        if toy:
            out = generate_toy_panoptic(
                root, num_train, num_val, size, args.seed, args.overwrite, thing_colors=thing_colors
            )
        else:
            out = write_layout(
                root,
                args.layout,
                num_train,
                num_val,
                size,
                args.seed,
                thing_colors=thing_colors,
                overwrite=args.overwrite,
            )
    except (ValueError, OSError) as e:
        parser.error(str(e))

    if toy:
        print(f"toy data set {'written' if out['generated'] else 'up to date'} in {out['root']}")
        print(
            "register with detr_panoptic_d2.data.toy_dataset.register_toy_panoptic("
            f"{out['root']!r}); names: toy_panoptic_train, toy_panoptic_val"
        )
        if args.visualize > 0:
            val_name = register_toy_panoptic(root)[1]
            _visualize(val_name, os.path.join(root, "vis"), args.visualize)
        return

    state = "written" if out["generated"] else "up to date"
    print(f"{args.layout} layout {state} in {out['dataset_root']}")
    names = out["dataset_names"]
    if args.layout == "custom":
        print(
            "register with dataset_layouts.register_custom_panoptic(NAME, "
            f"{out['dataset_root']!r}) (detectron2's register_coco_panoptic): names NAME_train, "
            "NAME_val"
        )
        if args.visualize > 0:
            val_name = register_custom_panoptic("custom_layout", out["dataset_root"])[1]
            _visualize(val_name, os.path.join(root, "vis"), args.visualize)
        return
    if args.visualize > 0:
        print(
            "--visualize draws the toy and custom sets only: the builtin names read "
            "DETECTRON2_DATASETS when detectron2 is imported"
        )
    print(f"set DETECTRON2_DATASETS={os.path.abspath(root)} before detectron2 is imported; then")
    if names["detectron2"]:
        print("  detectron2's builtin names: " + ", ".join(names["detectron2"]))
    if names["plugin"]:
        print(
            "  with detr_panoptic_d2.data.datasets.register_plugin_datasets(NAMES): "
            + ", ".join(names["plugin"])
        )


if __name__ == "__main__":
    main()
