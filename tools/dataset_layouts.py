"""Small synthetic data sets laid out on disk exactly as the real ones are.

:func:`write_layout` draws scenes (:func:`detr_panoptic_d2.data.scenes.draw_scene`) and writes
them with the paths, file names, id encodings and JSON fields of a real data set, so that the
registrations users rely on read them unchanged: detectron2's builtin names (which read
``$DETECTRON2_DATASETS`` when ``detectron2.data.datasets`` is imported), Mask2Former's names (this
plugin's :func:`~detr_panoptic_d2.data.datasets.register_plugin_datasets`), and a user's own
``register_coco_panoptic`` call (:func:`register_custom_panoptic`).

Layouts (``root`` is the ``$DETECTRON2_DATASETS`` folder, except for "custom")::

    coco        root/coco/{train,val}2017/<12-digit id>.jpg
                root/coco/panoptic_{train,val}2017/*.png            id2rgb, colour-derived ids
                root/coco/annotations/panoptic_{train,val}2017.json  133 COCO panoptic categories
                root/coco/annotations/instances_{train,val}2017.json 80 thing categories, RLE
                root/coco/panoptic_val2017_100/, annotations/{panoptic,instances}_val2017_100.json
                root/coco/panoptic_semseg_{train,val}2017/*.png     0..132, 255 void (Mask2Former)
                root/coco/panoptic_stuff_{train,val}2017{,_100}/*.png  things 0, stuff 1..53,
                                                                       255 void (detectron2)
    cityscapes  root/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
                root/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_{color.png,instanceIds.png,
                    labelIds.png,labelTrainIds.png,polygons.json}
                root/cityscapes/gtFine/cityscapes_panoptic_{train,val}.json
                root/cityscapes/gtFine/cityscapes_panoptic_{train,val}/<stem>_gtFine_panoptic.png
    ade20k      root/ADEChallengeData2016/images/{training,validation}/ADE_<split>_<8 digits>.jpg
                root/ADEChallengeData2016/annotations/{training,validation}/*.png   0 void, 1..150
                root/ADEChallengeData2016/annotations_instance/{training,validation}/*.png
                root/ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png
                root/ADEChallengeData2016/ade20k_panoptic_{train,val}.json + ade20k_panoptic_*/
                root/ADEChallengeData2016/ade20k_instance_{train,val}.json
    custom      root/images/{train,val}/scene_<id>.jpg, root/panoptic/{train,val}/scene_<id>.png,
                root/annotations/{panoptic,instances}_{train,val}.json   (CUSTOM_CATEGORIES)

Id encodings follow the real sets: COCO and ADE20K segment ids come from segment colours near
the category colour (as panopticapi's IdGenerator makes them, drawn from a seeded generator);
Cityscapes ids are ``category_id * 1000 + instance`` for things (``category_id`` for crowd
regions and stuff), as cityscapesscripts' createPanopticImgs writes them; the custom set numbers
its segments 1, 2, ... Derived files are made from the primary ones as the real preparation
scripts make them (Cityscapes panoptic from instanceIds, ADE20K panoptic from the semantic and
instance PNGs, semantic PNGs from panoptic PNGs). Some images have an unlabelled strip at the
bottom (void), and some COCO / Cityscapes things are crowd regions.

Each scene set uses at most one thing class per shape (:data:`~.scenes.THING_SHAPES`), so a
thing's class is always recognisable from its shape: COCO and ADE20K draw 5 thing and 3 stuff
classes of their category lists, Cityscapes all 8 thing classes and 4 stuff classes, the custom
set 5 things and 4 stuff. The JSON files list every category of the real data set.

A ``.detr_panoptic_d2_layout.json`` marker in the layout's folder records the arguments; the
set is rewritten only when they change (or with ``overwrite``), and a folder without the marker
(e.g. a real data set) is never written into.
"""

import json
import logging
import os
import shutil

import numpy as np
from PIL import Image

from detr_panoptic_d2.data.scenes import (
    THING_SHAPES,
    check_split_sizes,
    check_thing_colors,
    draw_scene,
    keep_registration,
    panoptic_metadata,
    segments_from_ids,
)

__all__ = [
    "LAYOUTS",
    "CUSTOM_CATEGORIES",
    "custom_panoptic_metadata",
    "register_custom_panoptic",
    "write_layout",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("coco", "cityscapes", "ade20k", "custom")
_MARKER = ".detr_panoptic_d2_layout.json"
_FORMAT_VERSION = 1
_SPLITS = ("train", "val")

# A user's own class list: 5 things and 4 stuff with non-contiguous ids, things and stuff mixed.
CUSTOM_CATEGORIES = [
    {"id": 1, "name": "floor", "isthing": 0, "color": [150, 130, 110]},
    {"id": 3, "name": "pallet", "isthing": 1, "color": [200, 160, 60]},
    {"id": 4, "name": "forklift", "isthing": 1, "color": [250, 200, 0]},
    {"id": 6, "name": "wall", "isthing": 0, "color": [200, 200, 190]},
    {"id": 8, "name": "crate", "isthing": 1, "color": [150, 90, 40]},
    {"id": 9, "name": "worker", "isthing": 1, "color": [255, 120, 0]},
    {"id": 12, "name": "ceiling", "isthing": 0, "color": [90, 90, 100]},
    {"id": 15, "name": "cone", "isthing": 1, "color": [240, 80, 30]},
    {"id": 17, "name": "rack", "isthing": 0, "color": [40, 70, 150]},
]

# Scene classes per layout: thing ids (one shape each, in THING_SHAPES order) and stuff ids in
# their top-to-bottom band order.
_SCENE_CLASSES = {
    "coco": ([1, 2, 3, 18, 44], [187, 197, 191]),  # person bicycle car dog bottle | sky building
    "cityscapes": ([24, 25, 26, 27, 28, 31, 32, 33], [23, 11, 21, 7]),  # 8 things | sky ... road
    "ade20k": ([12, 20, 19, 36, 98], [2, 0, 3]),  # person car chair lamp bottle | sky wall floor
    "custom": ([3, 4, 8, 9, 15], [12, 6, 17, 1]),
}
_DEFAULT_CROWD_PROB = {"coco": 0.1, "cityscapes": 0.1, "ade20k": 0.0, "custom": 0.0}

# Cityscapes: cityscapesscripts' label groups ("supercategory" in the panoptic JSON) of the 19
# evaluated classes, and the label drawn in the void strip.
_CITYSCAPES_SUPERCATEGORY = {
    7: "flat",
    8: "flat",
    11: "construction",
    12: "construction",
    13: "construction",
    17: "object",
    19: "object",
    20: "object",
    21: "nature",
    22: "nature",
    23: "sky",
    24: "human",
    25: "human",
    26: "vehicle",
    27: "vehicle",
    28: "vehicle",
    31: "vehicle",
    32: "vehicle",
    33: "vehicle",
}
_CITYSCAPES_VOID_LABEL = (1, "ego vehicle")  # id 1, ignored in evaluation, train id 255
_CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
# ADE20K: ade20k_panoptic_*.json lists category colours from the preparation script's palette,
# which differs from the registered metadata colours for one class.
_ADE20K_JSON_COLOR = {48: [140, 140, 200]}
_ADE20K_DIRS = {"train": "training", "val": "validation"}


# ----------------------------------------------------------------------------- helpers


def _categories(layout):
    """All categories of the real data set (dicts with id, name, isthing, color)."""
    if layout == "coco":
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

        return [dict(c) for c in COCO_CATEGORIES]
    if layout == "cityscapes":
        from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

        return [{**c, "color": list(c["color"])} for c in CITYSCAPES_CATEGORIES]
    if layout == "ade20k":
        from detr_panoptic_d2.data.datasets.ade20k_panoptic import ADE20K_150_CATEGORIES

        return [dict(c) for c in ADE20K_150_CATEGORIES]
    return [dict(c) for c in CUSTOM_CATEGORIES]


def _scene_classes(layout, cats):
    by_id = {c["id"]: c for c in cats}
    thing_ids, stuff_ids = _SCENE_CLASSES[layout]
    things = [{**by_id[i], "shape": THING_SHAPES[j]} for j, i in enumerate(thing_ids)]
    return things, [by_id[i] for i in stuff_ids]


def _rgb_to_id(color):
    r, g, b = (int(v) for v in color)
    return r + 256 * g + 256 * 256 * b


class _ColorIds:
    """Segment ids from segment colours, per image: a stuff segment takes its category colour, a
    thing its category colour if still free, else a free colour within +-30 of it (the scheme of
    panopticapi's IdGenerator, with a seeded generator)."""

    def __init__(self, categories, rng):
        self._cats = {c["id"]: c for c in categories}
        self._taken = {tuple(c["color"]) for c in categories if not c["isthing"]}
        self._taken.add((0, 0, 0))  # id 0 is void
        self._rng = rng

    def __call__(self, category_id):
        cat = self._cats[category_id]
        base = tuple(int(v) for v in cat["color"])
        if not cat["isthing"]:
            return _rgb_to_id(base)
        color = base
        while color in self._taken:
            jitter = self._rng.integers(-30, 31, size=3)
            color = tuple(np.clip(np.array(base) + jitter, 0, 255).tolist())
        self._taken.add(color)
        return _rgb_to_id(color)


def _sample(layout_things, layout_stuff, cfg, split, index, crowd_prob=None):
    """Draw image ``index`` of ``split`` and decide its void strip and crowd things, with the
    seed, image size, thing colours and probabilities of ``cfg`` (``crowd_prob`` overrides
    ``cfg["crowd_prob"]``).

    Returns:
        image (H, W, 3) uint8, scene ids (H, W) int32 (0 = void), dict scene id -> category id
        of the segments left visible, set of their thing scene ids, set of crowd scene ids.
    """
    seed, size, thing_colors = cfg["seed"], cfg["image_size"], cfg["thing_colors"]
    if crowd_prob is None:
        crowd_prob = cfg["crowd_prob"]
    split_index = _SPLITS.index(split)
    rng = np.random.default_rng([seed, split_index, index])
    scene = draw_scene(rng, size, layout_things, layout_stuff, thing_colors=thing_colors)
    extra = np.random.default_rng([seed, split_index, index, 1])
    image, ids = scene.image.copy(), scene.segment_ids.copy()
    if extra.random() < cfg["void_prob"]:
        rows = max(2, int(round(extra.uniform(0.05, 0.12) * ids.shape[0])))
        ids[-rows:] = 0
        strip = extra.normal(45, 6, size=image[-rows:].shape)
        image[-rows:] = np.clip(np.rint(strip), 0, 255).astype(np.uint8)
    thing_ids = {t["id"] for t in layout_things}
    category_of = {s["id"]: s["category_id"] for s in scene.segments if (ids == s["id"]).any()}
    things = {sid for sid, c in category_of.items() if c in thing_ids}
    crowd = {sid for sid in sorted(things) if extra.random() < crowd_prob}
    return image, ids, category_of, things, crowd


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _segment_info(segment_id, category_id, mask, iscrowd=0):
    """A COCO panoptic ``segments_info`` entry of the segment covering the (H, W) bool ``mask``."""
    return {
        "id": segment_id,
        "category_id": category_id,
        "area": int(mask.sum()),
        "bbox": _bbox(mask),
        "iscrowd": iscrowd,
    }


def _uncompressed_rle(mask):
    """COCO uncompressed RLE ({"counts": [...], "size": [h, w]}) of a (H, W) bool mask, column
    major, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def _instance_annotation(mask, ann_id, image_id, category_id, iscrowd):
    """COCO instance annotation of a (H, W) bool mask: compressed RLE, or uncompressed RLE for a
    crowd region (as COCO stores them)."""
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    area = int(mask_util.area(rle))
    if iscrowd:
        segmentation = _uncompressed_rle(mask)
    else:
        segmentation = {"counts": rle["counts"].decode("ascii"), "size": list(rle["size"])}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(category_id),
        "segmentation": segmentation,
        "area": area,
        "bbox": _bbox(mask),
        "iscrowd": int(iscrowd),
    }


def _thing_annotations(pan_ids, segments, isthing, image_id, first_id):
    """COCO instance annotations of the thing segments of one image (ids ``first_id``, ...), in
    segment order; ``pan_ids`` is the (H, W) segment id map, ``isthing`` maps category ids."""
    things = [seg for seg in segments if isthing[seg["category_id"]]]
    return [
        _instance_annotation(
            pan_ids == seg["id"], ann_id, image_id, seg["category_id"], seg["iscrowd"]
        )
        for ann_id, seg in enumerate(things, first_id)
    ]


def _save_json(data, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, **kwargs)


def _remap(ids, lut):
    """Apply dict scene id -> final id to an (H, W) map; 0 stays 0."""
    out = np.zeros(ids.shape, np.int64)
    for src, dst in lut.items():
        out[ids == src] = dst
    return out


def _coco_info():
    return {
        "description": "synthetic data in the COCO layout (dataset_layouts)",
        "version": "1.0",
        "year": 2017,
    }


# ----------------------------------------------------------------------------- coco


def _write_coco(droot, cfg):
    from panopticapi.utils import id2rgb

    from detr_panoptic_d2.data.datasets.coco_panoptic_semseg import write_semantic_from_panoptic

    cats = _categories("coco")
    things, stuff = _scene_classes("coco", cats)
    isthing = {c["id"]: c["isthing"] for c in cats}
    thing_cats = [{"id": c["id"], "name": c["name"]} for c in cats if c["isthing"]]
    pan_cats = [
        {"id": c["id"], "name": c["name"], "isthing": c["isthing"], "color": list(c["color"])}
        for c in cats
    ]
    written = {}
    for split, num in zip(_SPLITS, (cfg["num_train"], cfg["num_val"])):
        s = f"{split}2017"
        image_dir, pan_dir = os.path.join(droot, s), os.path.join(droot, f"panoptic_{s}")
        os.makedirs(image_dir)
        os.makedirs(pan_dir)
        images, pan_anns, inst_anns = [], [], []
        first_ann_id = 1 if split == "train" else 1_000_001
        for index in range(num):
            image, ids, category_of, thing_sids, crowd = _sample(things, stuff, cfg, split, index)
            image_id = (9 if split == "train" else 139) + 7 * index
            stem = f"{image_id:012d}"
            id_rng = np.random.default_rng([cfg["seed"], _SPLITS.index(split), index, 2])
            new_id = _ColorIds(cats, id_rng)
            present = sorted(category_of)
            lut = {sid: new_id(category_of[sid]) for sid in present}
            pan = _remap(ids, lut)  # (H, W) segment ids
            segments = segments_from_ids(
                pan, {lut[s]: category_of[s] for s in present}, {lut[s]: 1 for s in crowd}
            )
            h, w = pan.shape
            Image.fromarray(image).save(os.path.join(image_dir, stem + ".jpg"), quality=95)
            Image.fromarray(id2rgb(pan)).save(os.path.join(pan_dir, stem + ".png"))
            images.append(
                {"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w, "license": 1}
            )
            pan_anns.append(
                {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            )
            first_id = first_ann_id + len(inst_anns)
            inst_anns += _thing_annotations(pan, segments, isthing, image_id, first_id)
        licenses = [{"id": 1, "name": "synthetic", "url": ""}]
        pan_json = os.path.join(droot, "annotations", f"panoptic_{s}.json")
        inst_json = os.path.join(droot, "annotations", f"instances_{s}.json")
        _save_json(
            {
                "info": _coco_info(),
                "licenses": licenses,
                "images": images,
                "annotations": pan_anns,
                "categories": pan_cats,
            },
            pan_json,
        )
        _save_json(
            {
                "info": _coco_info(),
                "licenses": licenses,
                "images": images,
                "annotations": inst_anns,
                "categories": thing_cats,
            },
            inst_json,
        )
        written[split] = {
            "image_root": image_dir,
            "panoptic_root": pan_dir,
            "panoptic_json": pan_json,
            "instances_json": inst_json,
            "num_images": num,
        }
        if split == "val":
            # detectron2's coco_2017_val_100* names: the first (up to) 100 val images.
            n100 = min(100, num)
            keep = {im["id"] for im in images[:n100]}
            pan100_dir = os.path.join(droot, "panoptic_val2017_100")
            os.makedirs(pan100_dir)
            for ann in pan_anns[:n100]:
                shutil.copyfile(
                    os.path.join(pan_dir, ann["file_name"]),
                    os.path.join(pan100_dir, ann["file_name"]),
                )
            _save_json(
                {
                    "info": _coco_info(),
                    "licenses": licenses,
                    "images": images[:n100],
                    "annotations": pan_anns[:n100],
                    "categories": pan_cats,
                },
                os.path.join(droot, "annotations", "panoptic_val2017_100.json"),
            )
            _save_json(
                {
                    "info": _coco_info(),
                    "licenses": licenses,
                    "images": images[:n100],
                    "annotations": [a for a in inst_anns if a["image_id"] in keep],
                    "categories": thing_cats,
                },
                os.path.join(droot, "annotations", "instances_val2017_100.json"),
            )
            written["val_100"] = {"num_images": n100}
    # Semantic PNGs, made from the panoptic PNGs as the preparation scripts make them.
    for s in ("train2017", "val2017", "val2017_100"):
        pan_json = os.path.join(droot, "annotations", f"panoptic_{s}.json")
        pan_dir = os.path.join(droot, f"panoptic_{s}")
        if s != "val2017_100":  # Mask2Former's panoptic_semseg_*: 0..132
            write_semantic_from_panoptic(
                pan_json, pan_dir, os.path.join(droot, f"panoptic_semseg_{s}"), cats
            )
        # detectron2's panoptic_stuff_* (the "separated" registration): things 0, stuff 1..53
        write_semantic_from_panoptic(
            pan_json, pan_dir, os.path.join(droot, f"panoptic_stuff_{s}"), cats, things_as_zero=True
        )
    return written, {
        "detectron2": [
            "coco_2017_train_panoptic",
            "coco_2017_val_panoptic",
            "coco_2017_val_100_panoptic",
            "coco_2017_train",
            "coco_2017_val",
            "coco_2017_val_100",
            "coco_2017_train_panoptic_separated",
            "coco_2017_val_panoptic_separated",
            "coco_2017_val_100_panoptic_separated",
            "coco_2017_train_panoptic_stuffonly",
            "coco_2017_val_panoptic_stuffonly",
            "coco_2017_val_100_panoptic_stuffonly",
        ],
        "plugin": ["coco_2017_train_panoptic_with_sem_seg", "coco_2017_val_panoptic_with_sem_seg"],
    }


# ----------------------------------------------------------------------------- cityscapes


def _cityscapes_panoptic(instance_ids, cats):
    """Panoptic PNG (H, W, 3) uint8 and segments of a Cityscapes instanceIds map, as
    cityscapesscripts' createPanopticImgs makes them (category ids, not train ids)."""
    by_id = {c["id"]: c for c in cats}
    pan = np.zeros(instance_ids.shape + (3,), np.uint8)
    segments = []
    for segment_id in np.unique(instance_ids).tolist():
        label = segment_id if segment_id < 1000 else segment_id // 1000
        if label not in by_id:  # a label ignored in evaluation: void
            continue
        iscrowd = int(segment_id < 1000 and bool(by_id[label]["isthing"]))
        mask = instance_ids == segment_id
        pan[mask] = [segment_id % 256, segment_id // 256 % 256, segment_id // 256 // 256]
        segments.append(_segment_info(int(segment_id), int(label), mask, iscrowd))
    return pan, segments


def _polygons(mask):
    """Outer contours of a (H, W) bool mask as lists of [x, y] points."""
    import cv2

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c[:, 0, :].tolist() for c in contours if len(c) >= 3]


def _write_cityscapes(droot, cfg):
    cats = _categories("cityscapes")
    things, stuff = _scene_classes("cityscapes", cats)
    by_id = {c["id"]: c for c in cats}
    void_id, void_name = _CITYSCAPES_VOID_LABEL
    train_id = np.full(256, 255, np.uint8)  # label id -> train id
    color = np.zeros((256, 3), np.uint8)  # label id -> colour (void labels black)
    for c in cats:
        train_id[c["id"]] = c["trainId"]
        color[c["id"]] = c["color"]
    json_cats = [
        {
            "id": c["id"],
            "name": c["name"],
            "color": list(c["color"]),
            "supercategory": _CITYSCAPES_SUPERCATEGORY[c["id"]],
            "isthing": c["isthing"],
        }
        for c in cats
    ]
    written = {}
    for split, num in zip(_SPLITS, (cfg["num_train"], cfg["num_val"])):
        image_root = os.path.join(droot, "leftImg8bit", split)
        gt_root = os.path.join(droot, "gtFine", split)
        pan_dir = os.path.join(droot, "gtFine", f"cityscapes_panoptic_{split}")
        os.makedirs(pan_dir)
        images, annotations = [], []
        for index in range(num):
            image, ids, category_of, thing_sids, crowd = _sample(things, stuff, cfg, split, index)
            cities = _CITYSCAPES_CITIES[split]
            city = cities[index % len(cities)]
            stem = f"{city}_{index // len(cities):06d}_000019"
            # instanceIds: label id for stuff, crowd regions and void; label * 1000 + k for the
            # k-th instance (from 0) of a thing label.
            lut, count = {}, {}
            for sid in sorted(category_of):
                label = category_of[sid]
                if sid in thing_sids and sid not in crowd:
                    lut[sid] = label * 1000 + count.get(label, 0)
                    count[label] = count.get(label, 0) + 1
                else:
                    lut[sid] = label
            instance_ids = _remap(ids, lut)  # (H, W)
            instance_ids[ids == 0] = void_id
            label_ids = np.where(instance_ids < 1000, instance_ids, instance_ids // 1000)
            label_ids = label_ids.astype(np.uint8)
            for d in (os.path.join(image_root, city), os.path.join(gt_root, city)):
                os.makedirs(d, exist_ok=True)
            gt = os.path.join(gt_root, city, stem + "_gtFine_")
            Image.fromarray(image).save(os.path.join(image_root, city, stem + "_leftImg8bit.png"))
            Image.fromarray(instance_ids.astype(np.uint16)).save(gt + "instanceIds.png")
            Image.fromarray(label_ids).save(gt + "labelIds.png")
            Image.fromarray(train_id[label_ids]).save(gt + "labelTrainIds.png")
            rgba = np.concatenate(
                [color[label_ids], np.full(label_ids.shape + (1,), 255, np.uint8)], axis=2
            )
            Image.fromarray(rgba, "RGBA").save(gt + "color.png")
            h, w = label_ids.shape
            objects = []
            for segment_id in np.unique(instance_ids).tolist():
                label = segment_id if segment_id < 1000 else segment_id // 1000
                name = by_id[label]["name"] if label in by_id else void_name
                if label in by_id and by_id[label]["isthing"] and segment_id < 1000:
                    name += "group"
                for poly in _polygons(instance_ids == segment_id):
                    objects.append({"label": name, "polygon": poly})
            _save_json(
                {"imgHeight": h, "imgWidth": w, "objects": objects}, gt + "polygons.json", indent=4
            )
            # Panoptic files, from instanceIds as createPanopticImgs makes them.
            pan, segments = _cityscapes_panoptic(instance_ids, cats)
            Image.fromarray(pan).save(os.path.join(pan_dir, stem + "_gtFine_panoptic.png"))
            # createPanopticImgs names the image "<stem>_gtFine_leftImg8bit.png" (sic) and lists
            # the files in the sorted order of their instanceIds paths.
            order_key = os.path.join(city, stem + "_gtFine_instanceIds.png")
            images.append(
                (
                    order_key,
                    {
                        "id": stem,
                        "width": w,
                        "height": h,
                        "file_name": stem + "_gtFine_leftImg8bit.png",
                    },
                )
            )
            annotations.append(
                (
                    order_key,
                    {
                        "image_id": stem,
                        "file_name": stem + "_gtFine_panoptic.png",
                        "segments_info": segments,
                    },
                )
            )
        images = [im for _, im in sorted(images, key=lambda x: x[0])]
        annotations = [a for _, a in sorted(annotations, key=lambda x: x[0])]
        pan_json = os.path.join(droot, "gtFine", f"cityscapes_panoptic_{split}.json")
        _save_json(
            {"images": images, "annotations": annotations, "categories": json_cats},
            pan_json,
            sort_keys=True,
            indent=4,
        )
        written[split] = {
            "image_root": image_root,
            "gt_root": gt_root,
            "panoptic_root": pan_dir,
            "panoptic_json": pan_json,
            "num_images": num,
        }
    return written, {
        "detectron2": [
            "cityscapes_fine_panoptic_train",
            "cityscapes_fine_panoptic_val",
            "cityscapes_fine_sem_seg_train",
            "cityscapes_fine_sem_seg_val",
        ],
        "plugin": [],
    }


# ----------------------------------------------------------------------------- ade20k


def _ade20k_panoptic(semantic, instance, json_cats, instance_to_category, rng):
    """Panoptic PNG (H, W, 3) uint8 and segments from ADE20K's raw semantic (H, W) and instance
    (H, W, 3) PNGs, as Mask2Former's prepare_ade20k_pan_seg.py combines them: one segment per
    stuff class of the semantic map, one per instance of the instance map."""
    from panopticapi.utils import id2rgb

    by_id = {c["id"]: c for c in json_cats}
    new_id = _ColorIds(json_cats, rng)
    pan_ids = np.zeros(semantic.shape, np.int64)
    segments = []
    sem_cat = semantic.astype(np.int64) - 1  # -1 = void
    for cid in np.unique(sem_cat).tolist():
        if cid < 0 or by_id[cid]["isthing"]:
            continue
        mask = sem_cat == cid
        segments.append(_segment_info(new_id(cid), cid, mask))
        pan_ids[mask] = segments[-1]["id"]
    for k in np.unique(instance[..., 1]).tolist():
        if k == 0:
            continue
        mask = instance[..., 1] == k
        (inst_cat,) = np.unique(instance[..., 0][mask]).tolist()
        cid = instance_to_category[inst_cat]
        segments.append(_segment_info(new_id(cid), cid, mask))
        pan_ids[mask] = segments[-1]["id"]
    return id2rgb(pan_ids), segments


def _write_ade20k(droot, cfg):
    from detr_panoptic_d2.data.datasets.ade20k_panoptic import ADE20K_INSTANCE_CATEGORIES

    cats = _categories("ade20k")
    things, stuff = _scene_classes("ade20k", cats)
    json_cats = [
        {
            "name": c["name"],
            "id": c["id"],
            "isthing": c["isthing"],
            "color": _ADE20K_JSON_COLOR.get(c["id"], list(c["color"])),
        }
        for c in cats
    ]
    category_to_instance = {c["id"]: i + 1 for i, c in enumerate(ADE20K_INSTANCE_CATEGORIES)}
    instance_to_category = {v: k for k, v in category_to_instance.items()}
    written = {}
    for split, num in zip(_SPLITS, (cfg["num_train"], cfg["num_val"])):
        d = _ADE20K_DIRS[split]
        dirs = {
            k: os.path.join(droot, k, d)
            for k in ("images", "annotations", "annotations_instance", "annotations_detectron2")
        }
        pan_dir = os.path.join(droot, f"ade20k_panoptic_{split}")
        for p in list(dirs.values()) + [pan_dir]:
            os.makedirs(p)
        images, pan_anns, inst_anns = [], [], []
        ann_id = 1
        for index in range(num):
            image, ids, category_of, thing_sids, _ = _sample(
                things, stuff, cfg, split, index, crowd_prob=0.0
            )
            stem = f"ADE_{split}_{index + 1:08d}"
            h, w = ids.shape
            # Raw files as distributed: semantic class + 1 (0 = other), instance PNG with the
            # instance class (1..100) in R and the instance number (1, 2, ...) in G.
            semantic = np.zeros((h, w), np.uint8)
            instance = np.zeros((h, w, 3), np.uint8)
            for sid in sorted(category_of):
                semantic[ids == sid] = category_of[sid] + 1
            for k, sid in enumerate(sorted(thing_sids), 1):
                mask = ids == sid
                instance[mask, 0] = category_to_instance[category_of[sid]]
                instance[mask, 1] = k
            Image.fromarray(image).save(os.path.join(dirs["images"], stem + ".jpg"), quality=95)
            Image.fromarray(semantic).save(os.path.join(dirs["annotations"], stem + ".png"))
            Image.fromarray(instance).save(
                os.path.join(dirs["annotations_instance"], stem + ".png")
            )
            # prepare_ade20k_sem_seg.py: class - 1, so that "other" (0) wraps to 255.
            Image.fromarray(semantic - np.uint8(1)).save(
                os.path.join(dirs["annotations_detectron2"], stem + ".png")
            )
            id_rng = np.random.default_rng([cfg["seed"], _SPLITS.index(split), index, 2])
            pan, segments = _ade20k_panoptic(
                semantic, instance, json_cats, instance_to_category, id_rng
            )
            Image.fromarray(pan).save(os.path.join(pan_dir, stem + ".png"))
            images.append({"id": stem, "file_name": stem + ".jpg", "width": w, "height": h})
            pan_anns.append(
                {"image_id": stem, "file_name": stem + ".png", "segments_info": segments}
            )
            # prepare_ade20k_ins_seg.py: one COCO annotation per instance, compressed RLE.
            for k in np.unique(instance[..., 1]).tolist():
                if k == 0:
                    continue
                mask = instance[..., 1] == k
                cid = instance_to_category[int(instance[..., 0][mask][0])]
                inst_anns.append(_instance_annotation(mask, ann_id, stem, cid, 0))
                ann_id += 1
        pan_json = os.path.join(droot, f"ade20k_panoptic_{split}.json")
        inst_json = os.path.join(droot, f"ade20k_instance_{split}.json")
        _save_json({"images": images, "annotations": pan_anns, "categories": json_cats}, pan_json)
        _save_json(
            {
                "images": images,
                "categories": [dict(c) for c in ADE20K_INSTANCE_CATEGORIES],
                "annotations": inst_anns,
            },
            inst_json,
        )
        written[split] = {
            "image_root": dirs["images"],
            "panoptic_root": pan_dir,
            "panoptic_json": pan_json,
            "sem_seg_root": dirs["annotations_detectron2"],
            "instances_json": inst_json,
            "num_images": num,
        }
    return written, {
        "detectron2": ["ade20k_sem_seg_train", "ade20k_sem_seg_val"],
        "plugin": ["ade20k_panoptic_train", "ade20k_panoptic_val"],
    }


# ----------------------------------------------------------------------------- custom


def _custom_paths(root, split):
    return {
        "image_root": os.path.join(root, "images", split),
        "panoptic_root": os.path.join(root, "panoptic", split),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "instances_json": os.path.join(root, "annotations", f"instances_{split}.json"),
    }


def _write_custom(droot, cfg):
    from panopticapi.utils import id2rgb

    cats = _categories("custom")
    things, stuff = _scene_classes("custom", cats)
    isthing = {c["id"]: c["isthing"] for c in cats}
    written = {}
    for split, num in zip(_SPLITS, (cfg["num_train"], cfg["num_val"])):
        paths = _custom_paths(droot, split)
        os.makedirs(paths["image_root"])
        os.makedirs(paths["panoptic_root"])
        images, pan_anns, inst_anns = [], [], []
        for index in range(num):
            image, ids, category_of, _, crowd = _sample(things, stuff, cfg, split, index)
            image_id = (100 if split == "train" else 5000) + 3 * index
            stem = f"scene_{image_id:05d}"
            segments = segments_from_ids(ids, category_of, {s: 1 for s in crowd})
            h, w = ids.shape
            Image.fromarray(image).save(
                os.path.join(paths["image_root"], stem + ".jpg"), quality=95
            )
            Image.fromarray(id2rgb(ids)).save(os.path.join(paths["panoptic_root"], stem + ".png"))
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
            pan_anns.append(
                {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
            )
            inst_anns += _thing_annotations(ids, segments, isthing, image_id, len(inst_anns) + 1)
        _save_json(
            {"images": images, "annotations": pan_anns, "categories": cats}, paths["panoptic_json"]
        )
        _save_json(
            {
                "images": images,
                "annotations": inst_anns,
                "categories": [{"id": c["id"], "name": c["name"]} for c in cats if c["isthing"]],
            },
            paths["instances_json"],
        )
        written[split] = {**paths, "num_images": num}
    return written, {"detectron2": [], "plugin": []}


def custom_panoptic_metadata():
    """Metadata a user writes for the custom set (:data:`CUSTOM_CATEGORIES`), in detectron2's
    convention for COCO panoptic: contiguous ids in category order for things and stuff alike,
    both class lists naming all categories."""
    return panoptic_metadata(CUSTOM_CATEGORIES, things_in_stuff_map=False)


def register_custom_panoptic(name, root):
    """Register the custom set written by ``write_layout(root, "custom", ...)`` the way a user
    registers their own COCO panoptic data::

        from detectron2.data.datasets import register_coco_panoptic
        register_coco_panoptic(
            "warehouse_train", metadata, "root/images/train", "root/panoptic/train",
            "root/annotations/panoptic_train.json", "root/annotations/instances_train.json")

    Args:
        name: prefix; the splits are registered as ``<name>_train`` and ``<name>_val``.
        root: the folder given to :func:`write_layout`.

    Returns:
        tuple (``<name>_train``, ``<name>_val``). A name already registered with the same
        panoptic JSON is kept; registered with another one, it is replaced.
    """
    from detectron2.data.datasets import register_coco_panoptic

    root = os.fspath(root)
    names = []
    for split in _SPLITS:
        split_name, p = f"{name}_{split}", _custom_paths(root, split)
        names.append(split_name)
        if keep_registration(split_name, p["panoptic_json"]):
            continue
        register_coco_panoptic(
            split_name,
            custom_panoptic_metadata(),
            p["image_root"],
            p["panoptic_root"],
            p["panoptic_json"],
            p["instances_json"],
        )
    return tuple(names)


# ----------------------------------------------------------------------------- entry point

_WRITERS = {
    "coco": ("coco", _write_coco),
    "cityscapes": ("cityscapes", _write_cityscapes),
    "ade20k": ("ADEChallengeData2016", _write_ade20k),
    "custom": (None, _write_custom),
}
# Top-level entries of the layout folder that write_layout owns (removed before a rewrite).
_OWNED = {
    "coco": None,
    "cityscapes": None,
    "ade20k": None,  # the whole folder
    "custom": ("images", "panoptic", "annotations"),
}


def _check_args(layout, num_train, num_val, image_size, thing_colors, void_prob, crowd_prob):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lo, hi = check_split_sizes(num_train, num_val, image_size)
    check_thing_colors(thing_colors)
    for name, value in (("void_prob", void_prob), ("crowd_prob", crowd_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return lo, hi


def _relative(written, droot):
    return {
        split: {k: os.path.relpath(v, droot) if isinstance(v, str) else v for k, v in paths.items()}
        for split, paths in written.items()
    }


def _absolute(written, droot):
    return {
        split: {k: os.path.join(droot, v) if isinstance(v, str) else v for k, v in paths.items()}
        for split, paths in written.items()
    }


def write_layout(
    root,
    layout,
    num_train,
    num_val,
    image_size=(128, 192),
    seed=0,
    thing_colors="random",
    overwrite=False,
    void_prob=0.3,
    crowd_prob=None,
):
    """Write a small synthetic data set in the on-disk layout of a real one.

    Args:
        root: the ``$DETECTRON2_DATASETS`` folder for "coco", "cityscapes" and "ade20k" (the set
            goes to ``root/coco``, ``root/cityscapes``, ``root/ADEChallengeData2016``); for
            "custom", the folder of the set itself.
        layout: one of :data:`LAYOUTS` (see the module docstring for the files).
        num_train, num_val: images per split (each >= 1).
        image_size: (min, max) image side in px; height and width are drawn independently.
        seed: base seed; the same arguments give the same files.
        thing_colors: "random" (default; only the shape tells a thing's class) or "class".
        overwrite: rewrite even if the folder holds a set made with the same arguments.
        void_prob: probability that an image has an unlabelled strip at the bottom.
        crowd_prob: probability that a thing is a crowd region; default 0.1 for COCO and
            Cityscapes, 0 for ADE20K (its annotations have none) and the custom set.

    Returns:
        dict with "layout", "root", "dataset_root" (the folder written), "generated" (False if
        an identical set was already there), per split ("train", "val") the paths written and
        "num_images", and "dataset_names": {"detectron2": builtin names that read the set,
        "plugin": names that :func:`~.datasets.register_plugin_datasets` registers}.

    Raises:
        FileExistsError: the layout folder exists, is not empty and was not written here.
    """
    if crowd_prob is None:
        crowd_prob = _DEFAULT_CROWD_PROB.get(layout, 0.0)
    lo, hi = _check_args(
        layout, num_train, num_val, image_size, thing_colors, void_prob, crowd_prob
    )
    root = os.fspath(root)
    subdir, writer = _WRITERS[layout]
    droot = os.path.join(root, subdir) if subdir else root
    cfg = {
        "version": _FORMAT_VERSION,
        "layout": layout,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [lo, hi],
        "seed": int(seed),
        "thing_colors": thing_colors,
        "void_prob": float(void_prob),
        "crowd_prob": float(crowd_prob),
    }
    marker = os.path.join(droot, _MARKER)
    old = None
    if os.path.isfile(marker):
        with open(marker) as f:
            old = json.load(f)
    elif os.path.isdir(droot) and os.listdir(droot):
        raise FileExistsError(
            f"{droot} exists and was not written by write_layout (no {_MARKER});"
            " refusing to write into it"
        )
    if old is not None and old.get("complete") and old.get("args") == cfg and not overwrite:
        written, names = None, None
        generated = False
    else:
        owned = _OWNED[layout]
        if owned is None:
            shutil.rmtree(droot, ignore_errors=True)
        else:
            for entry in owned:
                shutil.rmtree(os.path.join(droot, entry), ignore_errors=True)
        os.makedirs(droot, exist_ok=True)
        _save_json({"args": cfg, "complete": False}, marker)
        logger.info("Writing a synthetic %s layout to %s (%s)", layout, droot, cfg)
        written, names = writer(droot, cfg)
        _save_json(
            {
                "args": cfg,
                "complete": True,
                "written": _relative(written, droot),
                "dataset_names": names,
            },
            marker,
        )
        generated = True
    if written is None:
        with open(marker) as f:
            done = json.load(f)
        written, names = _absolute(done["written"], droot), done["dataset_names"]
    return {
        "layout": layout,
        "root": root,
        "dataset_root": droot,
        "generated": generated,
        **written,
        "dataset_names": names,
    }
