"""Dataset mapper turning Detectron2 COCO-panoptic dataset dicts into DETR training targets."""

import copy
import logging
import sys
from collections import Counter

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import log_first_n
from panopticapi.utils import id2rgb, rgb2id
from torchvision.ops import masks_to_boxes

from detr_panoptic_runtime import image_io

__all__ = [
    "DetrPanopticDatasetMapper",
    "build_detr_augmentations",
    "exif_frame_note",
    "panoptic_problems",
    "read_image_file",
    "read_image_with_orientation",
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


def read_image_with_orientation(path, image_format="RGB", max_pixels=None):
    """((H, W, C) uint8 image in ``image_format``, the file's EXIF orientation) read with the
    project's one reader (:mod:`detr_panoptic_runtime.image_io`, which the exported-model runtime
    uses too): EXIF orientation applied as ``detection_utils.read_image`` does, 16-bit / 32-bit /
    float samples scaled to 8 bits, at most ``max_pixels`` pixels (0: no limit, None: Pillow's).
    Errors name the file: ``FileNotFoundError``, ``OSError`` (corrupt, truncated), ``ValueError``
    (empty), :class:`~detr_panoptic_runtime.image_io.ImageTooLargeError` (a ``ValueError``)."""
    image, orientation = image_io.load_image(path, max_pixels, PathManager.open)
    return image_io.to_array(image, image_format), orientation


def read_image_file(path, image_format="RGB", max_pixels=None):
    """(H, W, C) uint8 image of :func:`read_image_with_orientation`."""
    return read_image_with_orientation(path, image_format, max_pixels)[0]


def read_panoptic_png(path, max_pixels=None):
    """(H, W) int segment ids of a panoptic PNG (panopticapi's rgb2id), read as stored (no EXIF
    orientation); errors name the file, as :func:`read_image_file`'s."""
    png = image_io.open_image(path, "Panoptic PNG", max_pixels, PathManager.open)
    return rgb2id(np.asarray(png.convert("RGB")))


def panoptic_problems(
    segments, pan, image_shape, num_classes, png_name, orientation=1, image_name=None
):
    """Every way a panoptic PNG (H, W ids) and its ``segments_info`` disagree with each other, with
    the image's displayed (H, W) or with ``num_classes`` contiguous categories, as messages naming
    the PNG (empty: none). ``orientation``: the image's EXIF orientation; a PNG of the image's
    stored (unrotated) size is named as such."""
    problems = []
    image_shape = tuple(image_shape)
    its_image = f"its image {image_name}" if image_name else "its image"
    if pan.shape != image_shape:
        if orientation in (5, 6, 7, 8) and pan.shape == image_shape[::-1]:
            problems.append(
                f"Panoptic PNG {png_name} has size {pan.shape}, the size of {its_image} as "
                f"stored, but the image has EXIF orientation {orientation} and is used in its "
                f"displayed frame, of size {image_shape}: a panoptic PNG must be in the displayed "
                "frame (EXIF applied); rotate the PNG as the orientation says, or strip the "
                "image's EXIF orientation tag"
            )
        else:
            problems.append(
                f"Panoptic PNG {png_name} has size {pan.shape}, {its_image} {image_shape}"
            )
    counts = Counter(int(s["id"]) for s in segments)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    if duplicated:
        problems.append(
            f"Panoptic PNG {png_name}: segment ids {duplicated} are listed more than once in "
            "segments_info"
        )
    listed = set(counts)
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


def exif_frame_note(image_name, png_name, orientation, image_shape):
    """For an image with an EXIF orientation other than 1, the message saying that its panoptic
    PNG ``png_name`` (None: its annotations) is taken in the image's displayed frame (EXIF
    applied) of size ``image_shape`` (H, W); None for orientation 1."""
    if orientation == 1:
        return None
    what = f"its panoptic PNG {png_name}" if png_name else "its annotations"
    return (
        f"Image {image_name} has EXIF orientation {orientation}: {what} must be in the image's "
        f"displayed frame (EXIF applied), of size {tuple(image_shape)}"
    )


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
    (unreadable, truncated) naming the offending file; so do duplicate ids in ``segments_info`` and
    images above ``max_pixels`` (``INPUT.MAX_IMAGE_PIXELS``).

    EXIF orientation: the image is used in its displayed frame (EXIF applied, as Detectron2's
    ``read_image``), and the panoptic PNG, read as stored, must be in that displayed frame too, as
    Detectron2 assumes for every annotation. A PNG of the image's stored (unrotated) size, for
    orientations 5-8 of a non-square image, is an error saying so; where sizes cannot tell
    (orientations 2-4, square images) a warning names the file once.
    """

    @configurable
    def __init__(self, *, is_train, augmentations, image_format, num_classes, max_pixels=None):
        """
        Args:
            is_train: whether to produce training targets.
            augmentations: list of :class:`Augmentation` (or :class:`Transform`) applied in order.
            image_format: format of :func:`read_image_file`, e.g. "RGB" or "BGR".
            num_classes: number of contiguous categories; category ids must lie in [0, num_classes).
            max_pixels: images (and PNGs) of more pixels are refused (0: no limit; None: Pillow's
                limit, 2 * ``PIL.Image.MAX_IMAGE_PIXELS``).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.max_pixels = max_pixels

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "augmentations": build_detr_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.DETR.NUM_CLASSES,
            "max_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
        }

    def _read_segment_index(self, dataset_dict, image_shape, orientation):
        """Validate the panoptic PNG; return an index map (H, W) (0: void or crowd, i + 1: i-th
        non-crowd segment) and the classes (N,) of the non-crowd segments."""
        png_name, image_name = dataset_dict["pan_seg_file_name"], dataset_dict["file_name"]
        pan = read_panoptic_png(png_name, self.max_pixels)  # (H, W) int ids < 2^24
        segments = dataset_dict["segments_info"]
        problems = panoptic_problems(
            segments, pan, image_shape, self.num_classes, png_name, orientation, image_name
        )
        if problems:
            raise ValueError("; ".join(problems))
        h, w = image_shape
        if orientation in (2, 3, 4) or (orientation != 1 and h == w):  # sizes cannot tell
            note = exif_frame_note(image_name, png_name, orientation, image_shape)
            log_first_n(logging.WARNING, f"{note} (assumed: the sizes cannot tell)", key="message")
        kept = [s for s in segments if not s.get("iscrowd", 0)]
        index = np.zeros(pan.shape, dtype=np.int64)
        for i, s in enumerate(kept):
            index[pan == s["id"]] = i + 1
        classes = np.array([s["category_id"] for s in kept], dtype=np.int64)
        return index, classes

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified below
        image, orientation = read_image_with_orientation(
            dataset_dict["file_name"], self.image_format, self.max_pixels
        )
        utils.check_image_size(dataset_dict, image)

        sem_seg = None
        if self.is_train:
            index, classes = self._read_segment_index(dataset_dict, image.shape[:2], orientation)
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
