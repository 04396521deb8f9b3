"""A small, deterministic panoptic data set in COCO panoptic format, for demos and tests.

Each image has 1-3 horizontal "stuff" bands (sky, water, ground) with wavy boundaries and
0-4 coloured "thing" shapes (circle, square, triangle, bar, cross) of 22-55 % of the short side that may
occlude each other; a thing with less than 150 visible pixels gives way to the stuff underneath.
Colour and shape both identify a thing's class, so a small model learns the set quickly.

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

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 3
# Visible area (px) below which a thing falls back to the stuff underneath: a segment of fewer pixels
# is a few cells of a stride-4 mask.
_MIN_THING_AREA = 150
# Thing size range, as a fraction of the short image side: 0.22 x 128 px ~ 28 px, two stride-16 cells.
_THING_SIZE = (0.22, 0.55)
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
# Probability of drawing 0, 1, ..., 4 thing instances in an image (up to 6 before version 3: crowded images
# are the hardest for a DETR trained for minutes on a CPU).
_NUM_THINGS_P = np.array([0.08, 0.25, 0.27, 0.22, 0.18])


def _check_args(num_train, num_val, image_size):
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        lo, hi = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a pair (min, max) of ints, got {image_size!r}")
    if lo < 32 or lo > hi or hi > 2048:
        raise ValueError(
            f"image_size must satisfy 32 <= min <= max <= 2048, got image_size={image_size!r}"
        )
    return lo, hi


def _check_writable(root):
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write_test_"):
            pass
    except OSError as e:
        raise OSError(f"toy data set folder {root!r} is not writable: {e}") from e


def _shape_mask(kind, yy, xx, cx, cy, s, vertical):
    """Boolean mask of one thing shape of class ``kind`` with centre (cx, cy) and size s."""
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx**2 + dy**2 <= (s / 2) ** 2
    if kind == "square":
        return (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
    if kind == "triangle":  # apex up, base at the bottom
        h = 0.9 * s
        t = (dy + h / 2) / h  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * s / 2)
    if kind == "bar":
        long_, short = s / 2, s / 7
        ax, ay = (short, long_) if vertical else (long_, short)
        return (np.abs(dx) <= ax) & (np.abs(dy) <= ay)
    if kind == "cross":
        arm = s / 6
        inside = (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(kind)


def _make_sample(rng, lo, hi):
    """Return (rgb uint8 HxWx3, segment ids int32 HxW, segments_info) for one image."""
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ids = np.zeros((h, w), np.int32)
    cats, colors = {}, {}

    # Stuff: 1-3 bands from top to bottom with wavy boundaries.
    k = int(rng.integers(1, 4))
    stuff = sorted(rng.choice(len(_STUFF), size=k, replace=False).tolist())
    edges = [0.25, 0.75] if k == 2 else [0.25, 0.45, 0.55, 0.75]  # band boundaries stay apart
    cuts = [rng.uniform(edges[2 * i], edges[2 * i + 1]) * h for i in range(k - 1)]
    for i, si in enumerate(stuff):
        sid = i + 1
        if i == 0:
            ids[:] = sid
        else:
            amp, period, phase = rng.uniform(2, 6), rng.uniform(40, 120), rng.uniform(0, 2 * np.pi)
            boundary = cuts[i - 1] + amp * np.sin(2 * np.pi * xx / period + phase)
            ids[yy >= boundary] = sid
        cats[sid] = _STUFF[si]
        colors[sid] = np.array(_STUFF[si]["color"], np.float32) * rng.uniform(0.9, 1.1)

    stuff_ids = ids.copy()

    # Things: drawn in order, later ones occlude earlier ones.
    short = min(h, w)
    for j in range(int(rng.choice(len(_NUM_THINGS_P), p=_NUM_THINGS_P))):
        tid = k + 1 + j
        cat = _THINGS[int(rng.integers(len(_THINGS)))]
        s = rng.uniform(*_THING_SIZE) * short
        cx, cy = rng.uniform(s / 4, w - s / 4), rng.uniform(s / 4, h - s / 4)
        mask = _shape_mask(cat["name"], yy, xx, cx, cy, s, bool(rng.integers(2)))
        ids[mask] = tid
        cats[tid] = cat
        colors[tid] = np.array(cat["color"], np.float32) * rng.uniform(0.75, 1.0)

    # Thing segments whose visible part is too small fall back to the stuff underneath.
    for tid in [t for t in cats if cats[t]["isthing"]]:
        small = ids == tid
        if small.sum() < _MIN_THING_AREA:
            ids[small] = stuff_ids[small]

    # Render: per-segment colour, mild texture and noise, darker outline on things.
    present = [sid for sid in sorted(cats) if (ids == sid).any()]
    img = np.zeros((h, w, 3), np.float32)
    for sid in present:
        img[ids == sid] = colors[sid]
    shade = 1 + 0.06 * np.sin(xx / rng.uniform(5, 15) + yy / rng.uniform(5, 15))
    img *= shade[..., None]
    edge = np.zeros((h, w), bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, :-1] != ids[:, 1:]
    thing_px = np.isin(ids, [sid for sid in present if cats[sid]["isthing"]])
    img[edge & thing_px] *= 0.55
    img += rng.normal(0, 5, size=img.shape)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    segments = []
    for sid in present:
        ys, xs = np.nonzero(ids == sid)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append({
            "id": sid,
            "category_id": cats[sid]["id"],
            "iscrowd": 0,
            "area": int(len(xs)),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        })
    return rgb, ids, segments


def _split_paths(root, split):
    return {
        "image_root": os.path.join(root, split, "images"),
        "panoptic_root": os.path.join(root, split, "panoptic"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
    }


def _write_split(root, split, num_images, lo, hi, seed):
    from panopticapi.utils import id2rgb

    paths = _split_paths(root, split)
    for key in ("image_root", "panoptic_root"):
        shutil.rmtree(paths[key], ignore_errors=True)
        os.makedirs(paths[key])
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLITS.index(split), index])
        rgb, ids, segments = _make_sample(rng, lo, hi)
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
    root, num_train=400, num_val=200, image_size=(128, 192), seed=0, overwrite=False
):
    """Write the toy panoptic data set under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder; created if missing.
        num_train, num_val: number of images per split (each >= 1).
        image_size: (min, max) side length in pixels; height and width are drawn independently.
        seed: base seed; image i of a split uses ``np.random.default_rng([seed, split, i])``.
        overwrite: regenerate even if ``root/meta.json`` records the same arguments.

    Same arguments give byte-identical files. If the data set already exists with the same
    arguments, nothing is rewritten; with different arguments, it is regenerated.

    Returns:
        dict with "root", "generated" (bool), and per split ("train", "val") a dict with
        "image_root", "panoptic_root" and "panoptic_json".
    """
    lo, hi = _check_args(num_train, num_val, image_size)
    root = os.fspath(root)
    _check_writable(root)
    meta = {
        "version": _FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [lo, hi],
        "seed": int(seed),
        # The generator's constants are part of the cache key: changing one regenerates a cached set.
        "thing_size": list(_THING_SIZE),
        "min_thing_area": _MIN_THING_AREA,
        "num_things_p": _NUM_THINGS_P.tolist(),
    }
    result = {"root": root, **{s: _split_paths(root, s) for s in _SPLITS}}
    meta_path = os.path.join(root, "meta.json")
    old_meta = None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old_meta = json.load(f)
    complete = all(os.path.isfile(result[s]["panoptic_json"]) for s in _SPLITS)
    if not overwrite and complete and old_meta == meta:
        return {**result, "generated": False}
    if old_meta is not None and old_meta != meta:
        logger.info("Toy data set at %s was made with %s; regenerating with %s", root, old_meta,
                    meta)
    logger.info("Generating toy panoptic data set in %s (%s)", root, meta)
    if os.path.exists(meta_path):
        os.remove(meta_path)  # an interrupted run must not look complete
    for split, n in zip(_SPLITS, (num_train, num_val)):
        _write_split(root, split, int(n), lo, hi, int(seed))
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return {**result, "generated": True}


def toy_dataset_metadata():
    """Metadata for the toy set, in the convention of detectron2's builtin COCO panoptic set.

    Contiguous ids are shared by things and stuff in category order; ``thing_classes`` and
    ``stuff_classes`` both list all categories; ``thing_dataset_id_to_contiguous_id`` maps the
    things and ``stuff_dataset_id_to_contiguous_id`` maps all categories.
    """
    names = [c["name"] for c in TOY_CATEGORIES]
    colors = [list(c["color"]) for c in TOY_CATEGORIES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(TOY_CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(TOY_CATEGORIES)},
    }


def register_toy_panoptic(root, names=("toy_panoptic_train", "toy_panoptic_val")):
    """Register the train and val splits under ``root`` with detectron2's DatasetCatalog.

    Uses ``detectron2.data.datasets.register_coco_panoptic`` with :func:`toy_dataset_metadata`.
    Names already registered are skipped. Files are read lazily, when the data set is loaded,
    so :func:`generate_toy_panoptic` must have run by then. Returns the names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_panoptic

    root = os.fspath(root)
    if len(names) != len(_SPLITS):
        raise ValueError(f"names must give one name per split {_SPLITS}, got {names!r}")
    for name, split in zip(names, _SPLITS):
        p = _split_paths(root, split)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("panoptic_json") == p["panoptic_json"]:
                continue
            # registered for another root: replace it rather than silently use the other files
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if not os.path.isfile(p["panoptic_json"]):
            logger.warning("%s does not exist yet; run generate_toy_panoptic(%r)",
                           p["panoptic_json"], root)
        register_coco_panoptic(
            name, toy_dataset_metadata(), p["image_root"], p["panoptic_root"], p["panoptic_json"]
        )
    return tuple(names)


TOY_DATASET_NAMES = ("toy_panoptic_train", "toy_panoptic_val")


def register_toy_panoptic_from_cfg(cfg):
    """If the config names the toy splits, generate them (cached; on the main process, the others wait)
    with ``cfg.DATASETS.TOY.*`` and register them. Other data sets are left to the user's registration."""
    from detectron2.utils import comm

    names = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if not names & set(TOY_DATASET_NAMES):
        return
    toy = cfg.DATASETS.TOY
    if comm.is_main_process():
        generate_toy_panoptic(toy.ROOT, toy.NUM_TRAIN, toy.NUM_VAL, tuple(toy.IMAGE_SIZE))
    comm.synchronize()
    register_toy_panoptic(toy.ROOT, TOY_DATASET_NAMES)
