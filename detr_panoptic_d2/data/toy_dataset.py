"""A small, deterministic panoptic data set in COCO panoptic format, for demos and tests.

Each image has 1-3 horizontal "stuff" bands (sky, water, ground) with wavy boundaries and
0-4 "thing" shapes (circle, square, triangle, bar, cross) of 22-55 % of the short side that may
occlude each other; a thing with less than 150 visible pixels gives way to the stuff underneath.
The images are drawn by :func:`detr_panoptic_d2.data.scenes.draw_scene`.

Two thing colour modes (``thing_colors``, config key ``DATASETS.TOY.THING_COLORS``):

- ``"class"`` (default; the set of format versions <= 3, byte for byte): each thing class has its
  own colour (:data:`TOY_CATEGORIES`), slightly darkened at random. Colour and shape both identify
  the class, so a small model learns the set quickly.
- ``"random"``: each thing instance gets a random colour that stands out from the stuff bands
  behind it. Colour says nothing about the class; only the shape does.

Layout on disk (for each split in "train", "val")::

    root/<split>/images/000001.jpg        RGB image (JPEG, quality 95)
    root/<split>/panoptic/000001.png      segment ids encoded with panopticapi.utils.id2rgb
    root/annotations/panoptic_<split>.json
    root/meta.json                        arguments of the last generation (cache key)
"""

import json
import logging
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from .scenes import (
    MIN_THING_AREA,
    NUM_THINGS_P,
    THING_SIZE,
    check_split_sizes,
    check_thing_colors,
    draw_scene,
    keep_registration,
    panoptic_metadata,
)

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 3
_SPLITS = ("train", "val")

# Non-contiguous dataset ids, as in COCO, so the contiguous-id mapping is exercised.
TOY_CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 50, 50]},
    {"id": 2, "name": "square", "isthing": 1, "color": [235, 205, 40]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [60, 190, 70]},
    {"id": 5, "name": "bar", "isthing": 1, "color": [190, 60, 200]},
    {"id": 7, "name": "cross", "isthing": 1, "color": [245, 245, 245]},
    {"id": 10, "name": "sky", "isthing": 0, "color": [140, 195, 240]},
    {"id": 11, "name": "water", "isthing": 0, "color": [35, 80, 160]},
    {"id": 12, "name": "ground", "isthing": 0, "color": [130, 95, 60]},
]
_THINGS = [c for c in TOY_CATEGORIES if c["isthing"]]
_STUFF = [c for c in TOY_CATEGORIES if not c["isthing"]]  # listed top-to-bottom


def _check_writable(root):
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write_test_"):
            pass
    except OSError as e:
        raise OSError(f"toy data set folder {root!r} is not writable: {e}") from e


def _make_sample(rng, lo, hi, thing_colors="class"):
    """One toy image: a :class:`~.scenes.Scene`, i.e. (rgb uint8 (H, W, 3), segment ids int32
    (H, W), segments_info)."""
    things = [{**c, "shape": c["name"]} for c in _THINGS]
    return draw_scene(
        rng,
        (lo, hi),
        things,
        _STUFF,
        thing_colors=thing_colors,
        num_things_p=NUM_THINGS_P,
        thing_size=THING_SIZE,
        min_thing_area=MIN_THING_AREA,
    )


def _split_paths(root, split):
    return {
        "image_root": os.path.join(root, split, "images"),
        "panoptic_root": os.path.join(root, split, "panoptic"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
    }


def _write_split(root, split, num_images, lo, hi, seed, thing_colors):
    from panopticapi.utils import id2rgb

    paths = _split_paths(root, split)
    for key in ("image_root", "panoptic_root"):
        shutil.rmtree(paths[key], ignore_errors=True)
        os.makedirs(paths[key])
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLITS.index(split), index])
        rgb, ids, segments = _make_sample(rng, lo, hi, thing_colors)
        image_id, stem = index + 1, f"{index + 1:06d}"
        Image.fromarray(rgb).save(os.path.join(paths["image_root"], stem + ".jpg"), quality=95)
        Image.fromarray(id2rgb(ids)).save(os.path.join(paths["panoptic_root"], stem + ".png"))
        h, w = ids.shape
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        annotations.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        )
    data = {"images": images, "annotations": annotations, "categories": TOY_CATEGORIES}
    os.makedirs(os.path.dirname(paths["panoptic_json"]), exist_ok=True)
    with open(paths["panoptic_json"], "w") as f:
        json.dump(data, f)
    return paths


def generate_toy_panoptic(
    root,
    num_train=400,
    num_val=200,
    image_size=(128, 192),
    seed=0,
    overwrite=False,
    thing_colors="class",
):
    """Write the toy panoptic data set under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder; created if missing.
        num_train, num_val: number of images per split (each >= 1).
        image_size: (min, max) side length in pixels; height and width are drawn independently.
        seed: base seed; image i of a split uses ``np.random.default_rng([seed, split, i])``.
        overwrite: regenerate even if ``root/meta.json`` records the same arguments.
        thing_colors: "class" (each thing class in its own colour) or "random" (a random colour
            per thing instance; only the shape tells the class). See the module docstring.

    Same arguments give byte-identical files. If the data set already exists with the same
    arguments, nothing is rewritten; with different arguments, it is regenerated.

    Returns:
        dict with "root", "generated" (bool), and per split ("train", "val") a dict with
        "image_root", "panoptic_root" and "panoptic_json".
    """
    lo, hi = check_split_sizes(num_train, num_val, image_size)
    check_thing_colors(thing_colors)
    root = os.fspath(root)
    _check_writable(root)
    meta = {
        "version": _FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [lo, hi],
        "seed": int(seed),
        "thing_colors": thing_colors,
        # The generator's constants are part of the cache key: changing one regenerates a cached
        # set.
        "thing_size": list(THING_SIZE),
        "min_thing_area": MIN_THING_AREA,
        "num_things_p": NUM_THINGS_P.tolist(),
    }
    result = {"root": root, **{s: _split_paths(root, s) for s in _SPLITS}}
    meta_path = os.path.join(root, "meta.json")
    old_meta = None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old_meta = json.load(f)
        if old_meta.get("version") == 3 and "thing_colors" not in old_meta:
            # written before the key existed, when every set was class-coloured
            old_meta["thing_colors"] = "class"
    complete = all(os.path.isfile(result[s]["panoptic_json"]) for s in _SPLITS)
    if not overwrite and complete and old_meta == meta:
        return {**result, "generated": False}
    if old_meta is not None and old_meta != meta:
        logger.info(
            "Toy data set at %s was made with %s; regenerating with %s", root, old_meta, meta
        )
    logger.info("Generating toy panoptic data set in %s (%s)", root, meta)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # an interrupted run must not look complete
    for split, n in zip(_SPLITS, (num_train, num_val)):
        _write_split(root, split, int(n), lo, hi, int(seed), thing_colors)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return {**result, "generated": True}


def toy_dataset_metadata():
    """Metadata for the toy set, in the convention of detectron2's builtin COCO panoptic set.

    Contiguous ids are shared by things and stuff in category order; ``thing_classes`` and
    ``stuff_classes`` both list all categories; ``thing_dataset_id_to_contiguous_id`` maps the
    things and ``stuff_dataset_id_to_contiguous_id`` maps all categories.
    """
    return panoptic_metadata(TOY_CATEGORIES, things_in_stuff_map=True)


def register_toy_panoptic(root, names=("toy_panoptic_train", "toy_panoptic_val")):
    """Register the train and val splits under ``root`` with detectron2's DatasetCatalog.

    Uses ``detectron2.data.datasets.register_coco_panoptic`` with :func:`toy_dataset_metadata`.
    Names already registered are skipped. Files are read lazily, when the data set is loaded,
    so :func:`generate_toy_panoptic` must have run by then. Returns the names.
    """
    from detectron2.data.datasets import register_coco_panoptic

    root = os.fspath(root)
    if len(names) != len(_SPLITS):
        raise ValueError(f"names must give one name per split {_SPLITS}, got {names!r}")
    for name, split in zip(names, _SPLITS):
        p = _split_paths(root, split)
        if keep_registration(name, p["panoptic_json"]):
            continue
        if not os.path.isfile(p["panoptic_json"]):
            logger.warning(
                "%s does not exist yet; run generate_toy_panoptic(%r)", p["panoptic_json"], root
            )
        register_coco_panoptic(
            name, toy_dataset_metadata(), p["image_root"], p["panoptic_root"], p["panoptic_json"]
        )
    return tuple(names)


TOY_DATASET_NAMES = ("toy_panoptic_train", "toy_panoptic_val")


def register_toy_panoptic_from_cfg(cfg):
    """If the config names the toy splits, generate them (cached; on the main process, the others
    wait) with ``cfg.DATASETS.TOY.*`` and register them. Other data sets are left to the user's
    registration.

    ``DATASETS.TOY.THING_COLORS`` ("class" or "random") selects the thing colour mode; another
    value is a ValueError naming the key.
    """
    from detectron2.utils import comm

    names = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if not names & set(TOY_DATASET_NAMES):
        return
    toy = cfg.DATASETS.TOY
    thing_colors = check_thing_colors(toy.get("THING_COLORS", "class"), "DATASETS.TOY.THING_COLORS")
    if comm.get_local_rank() == 0:  # on each machine: machines need not share the folder
        from iopath.common.file_io import file_lock

        with file_lock(os.path.join(toy.ROOT, "meta.json")):  # machines that share it: once
            generate_toy_panoptic(
                toy.ROOT,
                toy.NUM_TRAIN,
                toy.NUM_VAL,
                tuple(toy.IMAGE_SIZE),
                thing_colors=thing_colors,
            )
    comm.synchronize()
    register_toy_panoptic(toy.ROOT, TOY_DATASET_NAMES)
