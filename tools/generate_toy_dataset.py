"""Generate the toy panoptic data set and optionally draw some val ground truth.

Example::

    python tools/generate_toy_dataset.py --root datasets/toy_panoptic --visualize 4
"""

import argparse
import logging
import os

import numpy as np
from PIL import Image

from detr_panoptic_d2.data.toy_dataset import generate_toy_panoptic, register_toy_panoptic


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/toy_panoptic", help="output folder")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--min-size", type=int, default=128, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=192, help="largest image side (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if cached")
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="draw the ground truth of N val images into ROOT/vis/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        out = generate_toy_panoptic(args.root, args.num_train, args.num_val,
                                    (args.min_size, args.max_size), args.seed, args.overwrite)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    print(f"toy data set {'written' if out['generated'] else 'up to date'} in {out['root']}")

    if args.visualize > 0:
        from detectron2.data import DatasetCatalog, MetadataCatalog
        from detectron2.utils.visualizer import Visualizer

        val_name = register_toy_panoptic(args.root)[1]
        vis_dir = os.path.join(args.root, "vis")
        os.makedirs(vis_dir, exist_ok=True)
        for d in DatasetCatalog.get(val_name)[: args.visualize]:
            img = np.asarray(Image.open(d["file_name"]).convert("RGB"))
            vis = Visualizer(img, MetadataCatalog.get(val_name), scale=2.0).draw_dataset_dict(d)
            path = os.path.join(vis_dir, os.path.basename(d["pan_seg_file_name"]))
            vis.save(path)
            print("wrote", path)


if __name__ == "__main__":
    main()
