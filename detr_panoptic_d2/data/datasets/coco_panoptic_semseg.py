"""COCO panoptic with semantic labels, registered as Mask2Former registers it, and the converter
that makes the semantic labels from the panoptic ones.

Names: ``coco_2017_train_panoptic_with_sem_seg`` and ``coco_2017_val_panoptic_with_sem_seg``.
Files under ``$DETECTRON2_DATASETS/coco/``::

    {train,val}2017/*.jpg                       images
    panoptic_{train,val}2017/*.png              panoptic PNGs (panopticapi id2rgb)
    annotations/panoptic_{train,val}2017.json   COCO panoptic JSON
    annotations/instances_{train,val}2017.json  COCO instances JSON
    panoptic_semseg_{train,val}2017/*.png       semantic PNGs made by prepare_coco_panoptic_semseg

The semantic PNGs hold, per pixel, the index of the segment's category in detectron2's
``COCO_CATEGORIES`` (0..132, things and stuff alike) and 255 where the panoptic PNG is void.
Users with only the panoptic annotations make them once with::

    from detr_panoptic_d2.data.datasets import prepare_coco_panoptic_semseg
    prepare_coco_panoptic_semseg()          # root: $DETECTRON2_DATASETS or "datasets"

As in Mask2Former, the metadata's ``thing_classes`` lists the 80 things while ``stuff_classes``
and ``stuff_dataset_id_to_contiguous_id`` cover all 133 categories; contiguous ids index the 133.
Unlike Mask2Former, registering does not touch the metadata of detectron2's own
``coco_2017_*_panoptic`` names. Importing registers nothing.
"""

import functools
import json
import logging
import os

import numpy as np
from PIL import Image

__all__ = [
    "COCO_PANOPTIC_SEMSEG_SPLITS",
    "get_coco_panoptic_with_sem_seg_metadata",
    "load_coco_panoptic_with_sem_seg_json",
    "register_coco_panoptic_with_sem_seg",
    "load_panoptic_with_sem_seg_json",
    "panoptic_with_sem_seg_metadata",
    "register_panoptic_with_sem_seg",
    "semantic_from_panoptic",
    "write_semantic_from_panoptic",
    "prepare_coco_panoptic_semseg",
]

logger = logging.getLogger(__name__)

# name -> (image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json), relative to
# the data set root ($DETECTRON2_DATASETS).
COCO_PANOPTIC_SEMSEG_SPLITS = {
    "coco_2017_train_panoptic_with_sem_seg": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic_with_sem_seg": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
    ),
}


def _coco_categories():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return COCO_CATEGORIES


def panoptic_with_sem_seg_metadata(categories):
    """Class metadata of a panoptic set with semantic labels, as Mask2Former sets it.

    Args:
        categories: list of dicts with "id", "name", "isthing" and "color", in contiguous order.

    Returns:
        dict with thing_classes / thing_colors (the things), stuff_classes / stuff_colors (all
        categories), thing_dataset_id_to_contiguous_id (things) and
        stuff_dataset_id_to_contiguous_id (all categories); contiguous ids index ``categories``.
    """
    return {
        "thing_classes": [c["name"] for c in categories if c["isthing"]],
        "thing_colors": [list(c["color"]) for c in categories if c["isthing"]],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": [list(c["color"]) for c in categories],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def get_coco_panoptic_with_sem_seg_metadata():
    """Class metadata of the ``coco_2017_*_panoptic_with_sem_seg`` splits.

    Returns:
        dict with thing_classes / thing_colors (80 things), stuff_classes / stuff_colors (all 133
        categories), thing_dataset_id_to_contiguous_id (things) and
        stuff_dataset_id_to_contiguous_id (all 133); contiguous ids index COCO_CATEGORIES.
    """
    return panoptic_with_sem_seg_metadata(_coco_categories())


def load_panoptic_with_sem_seg_json(
    json_file, image_dir, gt_dir, semseg_dir, meta, image_id=None, sem_seg_hint=""
):
    """Read a COCO panoptic JSON into detectron2 dataset dicts that also name a semantic PNG.

    Args:
        json_file: COCO panoptic JSON.
        image_dir: folder of the images ("<stem>.jpg" for the panoptic PNG "<stem>.png").
        gt_dir: folder of the panoptic PNGs named in the JSON.
        semseg_dir: folder of the semantic PNGs (same file names as the panoptic PNGs).
        meta: dict with thing_dataset_id_to_contiguous_id and stuff_dataset_id_to_contiguous_id.
        image_id: function applied to the JSON's image ids (e.g. ``int``); default: kept as is.
        sem_seg_hint: appended to the error raised when the first semantic PNG is missing.

    Returns:
        list[dict] with file_name, image_id, pan_seg_file_name, sem_seg_file_name and
        segments_info (category_id contiguous, isthing added).
    """
    from detectron2.utils.file_io import PathManager

    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    with PathManager.open(json_file) as f:
        json_info = json.load(f)

    ret = []
    for ann in json_info["annotations"]:
        image_key = ann["image_id"] if image_id is None else image_id(ann["image_id"])
        stem = os.path.splitext(ann["file_name"])[0]
        segments_info = []
        for seg in ann["segments_info"]:
            seg = dict(seg)
            cid = seg["category_id"]
            if cid in thing_map:
                seg["category_id"], seg["isthing"] = thing_map[cid], True
            elif cid in stuff_map:
                seg["category_id"], seg["isthing"] = stuff_map[cid], False
            else:
                raise KeyError(
                    f"{json_file}: image {image_key!r} has category id {cid}, "
                    "which the metadata does not list"
                )
            segments_info.append(seg)
        ret.append(
            {
                "file_name": os.path.join(image_dir, stem + ".jpg"),
                "image_id": image_key,
                "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
                "sem_seg_file_name": os.path.join(semseg_dir, ann["file_name"]),
                "segments_info": segments_info,
            }
        )
    if not ret:
        raise ValueError(f"{json_file} lists no annotations (images in {image_dir})")
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if not PathManager.isfile(ret[0][key]):
            hint = sem_seg_hint if key == "sem_seg_file_name" else ""
            raise FileNotFoundError(
                f"{ret[0][key]} ({key} of the first image of {json_file}) does not exist{hint}"
            )
    return ret


def load_coco_panoptic_with_sem_seg_json(json_file, image_dir, gt_dir, semseg_dir, meta):
    """Read a COCO panoptic JSON into detectron2 dataset dicts that also name a semantic PNG.

    Args:
        json_file: e.g. ".../coco/annotations/panoptic_val2017.json".
        image_dir: e.g. ".../coco/val2017" (images are "<stem>.jpg").
        gt_dir: folder of the panoptic PNGs, e.g. ".../coco/panoptic_val2017".
        semseg_dir: folder of the semantic PNGs (same file names as the panoptic PNGs).
        meta: dict with thing_dataset_id_to_contiguous_id and stuff_dataset_id_to_contiguous_id.

    Returns:
        list[dict] with file_name, image_id (int), pan_seg_file_name, sem_seg_file_name and
        segments_info (category_id contiguous, isthing added).
    """
    return load_panoptic_with_sem_seg_json(
        json_file,
        image_dir,
        gt_dir,
        semseg_dir,
        meta,
        image_id=int,
        sem_seg_hint=" (make them with prepare_coco_panoptic_semseg)",
    )


def register_panoptic_with_sem_seg(name, load, metadata, **values):
    """Register ``name`` with DatasetCatalog (dicts from ``load()``) and set its metadata: the
    keyword ``values`` (paths, evaluator_type), ignore_label 255, label_divisor 1000 and
    ``metadata``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**values, ignore_label=255, label_divisor=1000, **metadata)


def register_coco_panoptic_with_sem_seg(
    name, metadata, image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json
):
    """Register a COCO panoptic data set ``name`` whose dicts also carry ``sem_seg_file_name``.

    Args:
        name: e.g. "coco_2017_val_panoptic_with_sem_seg".
        metadata: class metadata, e.g. :func:`get_coco_panoptic_with_sem_seg_metadata`.
        image_root, panoptic_root, panoptic_json, sem_seg_root, instances_json: paths (see the
            module docstring).

    The metadata gets sem_seg_root, panoptic_root, image_root, panoptic_json, json_file
    (= instances_json), evaluator_type "coco_panoptic_seg", ignore_label 255, label_divisor 1000.
    """
    register_panoptic_with_sem_seg(
        name,
        lambda: load_coco_panoptic_with_sem_seg_json(
            panoptic_json, image_root, panoptic_root, sem_seg_root, metadata
        ),
        metadata,
        sem_seg_root=sem_seg_root,
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
    )


# ------------------------------------------------------------------ panoptic -> semantic PNGs


def semantic_from_panoptic(pan_ids, segments_info, id_map):
    """Semantic label map of one panoptic image.

    Args:
        pan_ids: (H, W) integer segment ids (panopticapi ``rgb2id`` of the PNG); 0 is void.
        segments_info: the image's segments (dicts with "id" and "category_id").
        id_map: dict category id -> semantic label (0..254).

    Returns:
        (H, W) uint8 map: each segment's label, 255 where no listed segment is.
    """
    out = np.full(pan_ids.shape, 255, np.uint8)
    for seg in segments_info:
        out[pan_ids == seg["id"]] = id_map[seg["category_id"]]
    return out


def _convert_one(item, id_map):
    from panopticapi.utils import rgb2id

    pan_png, sem_png, segments = item
    pan_ids = rgb2id(np.asarray(Image.open(pan_png).convert("RGB"), dtype=np.uint32))
    Image.fromarray(semantic_from_panoptic(pan_ids, segments, id_map)).save(sem_png)


def write_semantic_from_panoptic(
    panoptic_json, panoptic_root, sem_seg_root, categories, things_as_zero=False, num_workers=0
):
    """Write one semantic PNG per panoptic PNG listed in a COCO panoptic JSON.

    Args:
        panoptic_json: COCO panoptic JSON.
        panoptic_root: folder of its panoptic PNGs.
        sem_seg_root: output folder (created); files get the panoptic PNGs' names.
        categories: list of dicts with "id" and "isthing", in contiguous order.
        things_as_zero: False: label = index of the category in ``categories`` (Mask2Former's
            ``panoptic_semseg_*``). True: things 0 and stuff 1, 2, ... in order (detectron2's
            ``panoptic_stuff_*`` for its "separated" COCO panoptic registration).
        num_workers: processes to use; 0 converts in this process.

    Void pixels get 255. Returns the number of PNGs written.
    """
    if things_as_zero:
        stuff = [c for c in categories if not c["isthing"]]
        id_map = {c["id"]: 0 for c in categories if c["isthing"]}
        id_map.update({c["id"]: i + 1 for i, c in enumerate(stuff)})
    else:
        id_map = {c["id"]: i for i, c in enumerate(categories)}
    if max(id_map.values(), default=0) > 254:
        raise ValueError(
            f"{len(categories)} categories do not fit uint8 semantic labels (255 is void)"
        )
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    os.makedirs(sem_seg_root, exist_ok=True)
    items = []
    for ann in annotations:
        for seg in ann["segments_info"]:
            if seg["category_id"] not in id_map:
                raise KeyError(
                    f"{panoptic_json}: {ann['file_name']} has category id "
                    f"{seg['category_id']}, which the categories do not list"
                )
        items.append(
            (
                os.path.join(panoptic_root, ann["file_name"]),
                os.path.join(sem_seg_root, ann["file_name"]),
                ann["segments_info"],
            )
        )
    convert = functools.partial(_convert_one, id_map=id_map)
    if num_workers > 0:
        import multiprocessing as mp

        with mp.Pool(num_workers) as pool:
            pool.map(convert, items, chunksize=64)
    else:
        for item in items:
            convert(item)
    logger.info("Wrote %d semantic PNGs to %s", len(items), sem_seg_root)
    return len(items)


def prepare_coco_panoptic_semseg(root=None, splits=("val2017", "train2017"), num_workers=0):
    """Make ``coco/panoptic_semseg_<split>/`` from ``coco/panoptic_<split>/`` and its JSON.

    Args:
        root: data set root; default ``$DETECTRON2_DATASETS`` or "datasets".
        splits: COCO split names.
        num_workers: processes to use (0: this process).

    Returns:
        dict split -> semantic folder written.
    """
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    out = {}
    for split in splits:
        coco = os.path.join(os.fspath(root), "coco")
        panoptic_json = os.path.join(coco, "annotations", f"panoptic_{split}.json")
        if not os.path.isfile(panoptic_json):
            raise FileNotFoundError(f"{panoptic_json} does not exist")
        sem_root = os.path.join(coco, f"panoptic_semseg_{split}")
        write_semantic_from_panoptic(
            panoptic_json,
            os.path.join(coco, f"panoptic_{split}"),
            sem_root,
            _coco_categories(),
            num_workers=num_workers,
        )
        out[split] = sem_root
    return out
