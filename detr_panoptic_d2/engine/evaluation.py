"""Evaluators for every panoptic registration: PQ (panopticapi), box/mask AP over the thing classes,
mIoU.

Detectron2's ``COCOEvaluator`` assumes the model's contiguous classes are the instance JSON's
categories (0..N-1, named by ``thing_classes``). A panoptic model's contiguous classes span things
and stuff (COCO: 133, things scattered among them in ADE20K), so :class:`DetrInstanceEvaluator` maps
only the thing classes back to data set ids, names the per-category tables after the JSON's own
categories, and, for sets registered without an instances JSON (Cityscapes panoptic, the toy set,
most custom sets), writes one from the panoptic ground truth. :class:`DetrPanopticEvaluator` checks
the panoptic ground truth that PQ is computed on.

Each machine of a multi-machine run writes the files its processes read (its own ``OUTPUT_DIR``
need not be shared); files read by the main process alone are written by it alone.
"""

import itertools
import json
import logging
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import file_lock
from panopticapi.utils import rgb2id
from PIL import Image

from ..data.dataset_mapper import panoptic_problems, read_panoptic_png

logger = logging.getLogger(__name__)


def instances_json_from_panoptic(dataset_name, output_file):
    """Write a COCO instances JSON of the thing segments of a panoptic data set (RLE masks, boxes
    and areas from its PNGs, crowd flags kept; categories: the thing classes with their data set
    ids). Returns the path."""
    meta = MetadataCatalog.get(dataset_name)
    to_dataset_id = {c: d for d, c in meta.thing_dataset_id_to_contiguous_id.items()}
    names = meta.get("thing_classes", [])
    categories = [
        {"id": d, "name": names[c] if c < len(names) else str(d)}
        for c, d in sorted(to_dataset_id.items())
    ]
    images, annotations = [], []
    for record in DatasetCatalog.get(dataset_name):
        with PathManager.open(record["pan_seg_file_name"], "rb") as f:
            ids = rgb2id(np.asarray(Image.open(f).convert("RGB")))  # (H, W)
        images.append(
            {
                "id": record["image_id"],
                "file_name": os.path.basename(record["file_name"]),
                "height": ids.shape[0],
                "width": ids.shape[1],
            }
        )
        for seg in record["segments_info"]:
            if seg["category_id"] not in to_dataset_id:
                continue
            mask = ids == seg["id"]
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "segmentation": rle,
                    "category_id": to_dataset_id[seg["category_id"]],
                    "iscrowd": int(seg.get("iscrowd", 0)),
                    "area": int(mask.sum()),
                    "bbox": mask_util.toBbox(rle).tolist(),
                }
            )
    PathManager.mkdirs(os.path.dirname(output_file))
    with PathManager.open(output_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    logger.info(
        f"Wrote the instances of {dataset_name} ({len(annotations)} things) to {output_file}"
    )
    return output_file


class _DatasetIdMetadata:
    """What ``COCOEvaluator._eval_predictions`` reads of the metadata once predictions carry data
    set ids: no id mapping, and the class names in the order of the JSON's categories."""

    def __init__(self, class_names):
        self.class_names = class_names

    def get(self, key, default=None):
        return self.class_names if key == "thing_classes" else default


class DetrInstanceEvaluator(COCOEvaluator):
    """COCO box/mask AP of the thing classes of a panoptic model (any contiguous thing ids, COCO's,
    ADE20K's, Cityscapes', a custom set's). Predictions of other classes are dropped; without
    ``json_file`` in the metadata, the ground truth is written from the panoptic annotations into
    ``output_dir``."""

    def __init__(self, dataset_name, tasks, output_dir, **kwargs):
        meta = MetadataCatalog.get(dataset_name)
        if not meta.get("json_file") and meta.get("panoptic_json"):
            path = os.path.join(output_dir, f"{dataset_name}_instances_from_panoptic.json")
            # COCOEvaluator reads it in every process: the first process of each machine writes
            # it (machines need not share OUTPUT_DIR; the lock serializes those that do)
            if comm.get_local_rank() == 0:
                with file_lock(path):
                    if not PathManager.exists(path):
                        instances_json_from_panoptic(dataset_name, path)
            comm.synchronize()
            if hasattr(meta, "json_file"):  # registered as None, and Metadata values cannot change:
                # COCOEvaluator reads the ground truth of a copy of the metadata that has it
                values = {k: v for k, v in meta.as_dict().items() if k not in ("name", "json_file")}
                dataset_name = f"{dataset_name}@{path}"
                MetadataCatalog.get(dataset_name).set(**values, json_file=path)
            else:
                meta.json_file = path
        super().__init__(dataset_name, tasks, output_dir=output_dir, **kwargs)

    def _eval_predictions(self, predictions, img_ids=None):
        to_dataset_id = {c: d for d, c in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        kept = [
            dict(r)
            for x in predictions
            for r in x["instances"]
            if r["category_id"] in to_dataset_id
        ]
        for r in kept:
            r["category_id"] = to_dataset_id[r["category_id"]]
        cats = self._coco_api.loadCats(sorted(self._coco_api.getCatIds()))
        metadata, self._metadata = self._metadata, _DatasetIdMetadata([c["name"] for c in cats])
        try:
            super()._eval_predictions([{"instances": kept}], img_ids)
        finally:
            self._metadata = metadata


def _image_key(image_id):
    """One key for an image id whether it is written as an int or a string ("12", 12)."""
    try:
        return str(int(image_id))
    except (TypeError, ValueError):
        return str(image_id)


class DetrPanopticEvaluator(COCOPanopticEvaluator):
    """``COCOPanopticEvaluator`` that checks the ground truth it computes PQ on.

    panopticapi checks each predicted PNG against its ``segments_info``, not the ground truth: an
    id in a ground-truth PNG that its ``segments_info`` (in ``panoptic_json``) does not list is
    skipped, a listed id absent from the PNG counts as a missed segment, and of duplicate ids one
    is kept, so a ground truth that does not match its annotations gives a PQ without a word. Here
    the ground-truth PNG of each evaluated image is checked against its ``segments_info`` (in
    ``process``, by the process that evaluates the image), and ``evaluate`` raises ``ValueError``
    in every process, naming each PNG and its ids, before any PQ is computed."""

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name, output_dir)
        self._dataset_name = dataset_name
        self._ground_truth = None  # image key -> (PNG path, segments_info), read on first use
        self._gt_problems = []

    def reset(self):
        super().reset()
        self._gt_problems = []

    def _annotations(self):
        if self._ground_truth is None:
            with PathManager.open(self._metadata.panoptic_json) as f:
                annotations = json.load(f)["annotations"]
            root = self._metadata.panoptic_root
            self._ground_truth = {
                _image_key(a["image_id"]): (os.path.join(root, a["file_name"]), a["segments_info"])
                for a in annotations
            }
        return self._ground_truth

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        categories = {
            *self._metadata.thing_dataset_id_to_contiguous_id,
            *self._metadata.stuff_dataset_id_to_contiguous_id,
        }
        for input, output in zip(inputs, outputs):
            entry = self._annotations().get(_image_key(input["image_id"]))
            if entry is None:
                self._gt_problems.append(
                    f"image {input['image_id']} ({input.get('file_name')}) has no annotation in "
                    f"{self._metadata.panoptic_json}: PQ would leave it out"
                )
                continue
            png, segments = entry
            pan = read_panoptic_png(png)
            # the prediction has the image's size; category ids here are the data set's, not
            # contiguous ones: checked against the registration's below
            shape = tuple(output["panoptic_seg"][0].shape)
            self._gt_problems += panoptic_problems(segments, pan, shape, sys.maxsize, png)
            self._gt_problems += [
                f"Panoptic PNG {png}: segment {s['id']} has category_id {s['category_id']}, not "
                f"a category of {self._dataset_name}"
                for s in segments
                if s["category_id"] not in categories
            ]

    def evaluate(self):
        problems = list(itertools.chain(*comm.all_gather(self._gt_problems)))
        if problems:  # in every process: none is left waiting in the gather of the predictions
            shown = "; ".join(problems[:20])
            more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"The panoptic ground truth of {self._dataset_name} "
                f"({self._metadata.panoptic_json}) does not match its PNGs, PQ would be wrong: "
                f"{shown}{more}"
            )
        return super().evaluate()


class DetrSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` whose predictions of thing classes map back to data set ids too:
    Detectron2's maps through ``stuff_dataset_id_to_contiguous_id`` only, which lists every class in
    COCO's and ADE20K's registrations but only the stuff classes in Cityscapes' (a thing label then
    fails an assertion)."""

    def __init__(self, dataset_name, **kwargs):
        super().__init__(dataset_name, **kwargs)
        meta = MetadataCatalog.get(dataset_name)
        ids = {
            **meta.get("thing_dataset_id_to_contiguous_id", {}),
            **meta.get("stuff_dataset_id_to_contiguous_id", {}),
        }
        if ids:
            self._contiguous_id_to_dataset_id = {c: d for d, c in ids.items()}


def build_detr_evaluator(cfg, dataset_name, output_folder):
    """The evaluators a data set's registration supports, for what the config's model outputs:

    * PQ/SQ/RQ (:class:`DetrPanopticEvaluator`: ``COCOPanopticEvaluator`` that checks the ground
      truth) for any set with ``panoptic_json`` (COCO, Cityscapes, ADE20K and custom panoptic
      registrations), with a mask head;
    * box AP (and mask AP with a mask head) over the thing classes (:class:`DetrInstanceEvaluator`)
      for sets with an instances JSON or panoptic annotations; Pascal VOC's own AP for "pascal_voc";
    * mIoU (``SemSegEvaluator``) for sets with semantic ground truth (``sem_seg_file_name``), with
      ``MODEL.DETR.TEST.SEMANTIC_ON`` and as many classes as ``stuff_classes``.

    Evaluator types Detectron2 registers but whose official tools are not installed here
    (Cityscapes' and LVIS' own scripts) are served by the same COCO-style evaluators. Raises
    NotImplementedError (which ``DefaultTrainer.test`` reports as a warning) only when nothing
    applies.
    """
    meta = MetadataCatalog.get(dataset_name)
    test = cfg.MODEL.DETR.TEST
    has_masks = bool(cfg.MODEL.MASK_HEAD.NAME)
    evaluators = []
    if meta.get("panoptic_json") and has_masks and test.PANOPTIC_ON:
        evaluators.append(DetrPanopticEvaluator(dataset_name, output_folder))
    if test.INSTANCE_ON:
        if meta.get("evaluator_type") == "pascal_voc":
            evaluators.append(PascalVOCDetectionEvaluator(dataset_name))
        elif meta.get("json_file") or meta.get("panoptic_json"):
            tasks = ("bbox", "segm") if has_masks else ("bbox",)
            evaluators.append(DetrInstanceEvaluator(dataset_name, tasks, output_folder))
    if test.SEMANTIC_ON and has_masks:
        first = DatasetCatalog.get(dataset_name)[:1]
        num_stuff = len(meta.get("stuff_classes", []))
        if first and "sem_seg_file_name" in first[0] and num_stuff == cfg.MODEL.DETR.NUM_CLASSES:
            evaluators.append(
                DetrSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
            )
        else:
            logger.warning(
                f"MODEL.DETR.TEST.SEMANTIC_ON: no mIoU for {dataset_name}: it registers no "
                "semantic ground truth (sem_seg_file_name) for "
                f"MODEL.DETR.NUM_CLASSES={cfg.MODEL.DETR.NUM_CLASSES} classes (stuff_classes: "
                f"{num_stuff})"
            )
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for data set {dataset_name!r} "
            f"(evaluator_type={meta.get('evaluator_type')!r}, "
            f"MODEL.MASK_HEAD.NAME={cfg.MODEL.MASK_HEAD.NAME!r}): panoptic evaluation needs a mask "
            "head and panoptic_json in the metadata; box evaluation needs an instances JSON "
            "(json_file) or panoptic annotations"
        )
    return DatasetEvaluators(evaluators)
