"""Dataset mapper turning Detectron2 COCO-panoptic dataset dicts into DETR training targets."""

import copy
import sys

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.file_io import PathManager
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from torchvision.ops import masks_to_boxes

__all__ = [
    "DetrPanopticDatasetMapper",
    "build_detr_augmentations",
    "panoptic_problems",
    "read_image_file",
    "read_panoptic_png",
]


def build_detr_augmentations(cfg, is_train):
    """DETR's recipe: flip, then (with prob. DETR_CROP.PROB) pre-resize + random crop, then
    multi-scale resize; at test time a single ResizeShortestEdge."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
    augs = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    crop = cfg.INPUT.DETR_CROP
    if crop.ENABLED:
        crop_augs = T.AugmentationList(
            [
                # No max size: DETR's RandomResize([400, 500, 600]) before the crop has none.
                T.ResizeShortestEdge(crop.PRE_RESIZE, max_size=sys.maxsize, sample_style="choice"),
                T.RandomCrop("absolute_range", tuple(crop.SIZE)),
            ]
        )
        augs.append(T.RandomApply(crop_augs, prob=crop.PROB))
    augs.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    return augs


def _read(path, what, reader):
    """reader(path) with errors that name the file: missing, or unreadable (corrupt, truncated, not
    an image: PIL raises OSError/SyntaxError/ValueError with messages such as "image file is
    truncated")."""
    try:
        return reader(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} file not found: {path}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"{what} {path} cannot be read (corrupt or truncated?): {e}") from e


def read_image_file(path, image_format="RGB"):
    """(H, W, C) uint8 image as ``detection_utils.read_image`` reads it; errors name the file, an
    empty image is a ValueError."""
    image = _read(path, "Image", lambda p: utils.read_image(p, format=image_format))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Image {path} is empty (shape {image.shape})")
    return image


def read_panoptic_png(path):
    """(H, W) int segment ids of a panoptic PNG (panopticapi's rgb2id); errors name the file."""

    def read(p):
        with PathManager.open(p, "rb") as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return rgb2id(_read(path, "Panoptic PNG", read))


def panoptic_problems(segments, pan, image_shape, num_classes, png_name):
    """Every way a panoptic PNG (H, W ids) and its ``segments_info`` disagree with each other, with
    the image's (H, W) or with ``num_classes`` contiguous categories, as messages naming the PNG
    (empty: none)."""
    problems = []
    if pan.shape != tuple(image_shape):
        problems.append(
            f"Panoptic PNG {png_name} has size {pan.shape}, its image {tuple(image_shape)}"
        )
    listed = {int(s["id"]) for s in segments}
    present = set(np.unique(pan).tolist()) - {0}
    if listed - present:
        problems.append(
            f"Panoptic PNG {png_name}: segment ids {sorted(listed - present)} of segments_info are "
            "absent from it"
        )
    if present - listed:
        problems.append(
            f"Panoptic PNG {png_name}: ids {sorted(present - listed)} are not listed in "
            "segments_info"
        )
    for s in segments:
        if not 0 <= s["category_id"] < num_classes:
            problems.append(
                f"Panoptic PNG {png_name}: segment {s['id']} has category_id {s['category_id']} "
                f"outside [0, {num_classes})"
            )
    return problems


class DetrPanopticDatasetMapper:
    """
    Map a dataset dict of a data set registered with Detectron2's COCO panoptic registration
    (``file_name``, ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id``) to
    the input of the DETR panoptic model:

    * ``"image"``: uint8 tensor (C, H, W) in ``image_format``, after augmentation;
    * ``"instances"`` (training only): :class:`Instances` of the augmented size with
      ``gt_classes`` (int64, (N,)), ``gt_masks`` (:class:`BitMasks`, bool (N, H, W)) and
      ``gt_boxes`` (:class:`Boxes`, absolute XYXY with inclusive max, from the masks).

    Crowd segments are skipped, segments emptied by cropping are dropped. At test time only the
    image is read; ``segments_info`` and ``pan_seg_file_name`` are removed from the output.
    Inputs that do not match their annotation raise ``ValueError``/``FileNotFoundError``/``OSError``
    (unreadable, truncated) naming the offending file.
    """

    @configurable
    def __init__(self, *, is_train, augmentations, image_format, num_classes):
        """
        Args:
            is_train: whether to produce training targets.
            augmentations: list of :class:`Augmentation` (or :class:`Transform`) applied in order.
            image_format: format given to :func:`detection_utils.read_image`, e.g. "RGB" or "BGR".
            num_classes: number of contiguous categories; category ids must lie in [0, num_classes).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_detr_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.DETR.NUM_CLASSES,
        }

    def _read_segment_index(self, dataset_dict, image_shape):
        """Validate the panoptic PNG; return an index map (H, W) (0: void or crowd, i + 1: i-th
        non-crowd segment) and the classes (N,) of the non-crowd segments."""
        pan = read_panoptic_png(dataset_dict["pan_seg_file_name"])  # (H, W) int ids < 2^24
        segments = dataset_dict["segments_info"]
        problems = panoptic_problems(
            segments, pan, image_shape, self.num_classes, dataset_dict["pan_seg_file_name"]
        )
        if problems:
            raise ValueError("; ".join(problems))
        kept = [s for s in segments if not s.get("iscrowd", 0)]
        index = np.zeros(pan.shape, dtype=np.int64)
        for i, s in enumerate(kept):
            index[pan == s["id"]] = i + 1
        classes = np.array([s["category_id"] for s in kept], dtype=np.int64)
        return index, classes

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified below
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)

        sem_seg = None
        if self.is_train:
            index, classes = self._read_segment_index(dataset_dict, image.shape[:2])
            # Transforms resize sem_seg with nearest interpolation, exact for uint8 (PIL path);
            # int32 is not supported there. More than 255 segments: encode the index in 3 uint8
            # channels.
            sem_seg = index.astype(np.uint8) if len(classes) < 256 else id2rgb(index)
        else:
            dataset_dict.pop("segments_info", None)
            dataset_dict.pop("pan_seg_file_name", None)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = aug_input.image
        # (H, W, C) -> (C, H, W)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict

        index = aug_input.sem_seg
        index = rgb2id(index) if index.ndim == 3 else index.astype(np.int64)  # (H, W)
        h, w = index.shape
        present = (
            np.bincount(index.ravel(), minlength=len(classes) + 1)[1:] > 0
        )  # drop emptied segments
        seg_idx = np.nonzero(present)[0]
        masks = torch.from_numpy(index[None] == (seg_idx + 1)[:, None, None])  # (N, H, W) bool
        instances = Instances((h, w))
        instances.gt_classes = torch.as_tensor(classes[seg_idx], dtype=torch.int64)
        instances.gt_masks = BitMasks(masks)
        instances.gt_boxes = Boxes(masks_to_boxes(masks).reshape(-1, 4))  # (N, 4) XYXY
        dataset_dict["instances"] = instances
        return dataset_dict
