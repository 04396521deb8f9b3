"""Checking a registered panoptic data set with the dataset mapper's own rules, listing every
problem (the mapper stops at the first one). Used by ``tools/check_dataset.py``."""

import json
from dataclasses import dataclass, field

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .dataset_mapper import (
    exif_frame_note,
    panoptic_problems,
    read_image_with_orientation,
    read_panoptic_png,
)


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found in one data set."""

    name: str
    records: int = 0
    empty: int = 0  # images without any non-crowd segment (legal: all queries learn no-object)
    problems: list = field(default_factory=list)  # messages, each naming its file
    # images with an EXIF orientation other than 1 (legal), each saying in which frame its PNG is
    exif: list = field(default_factory=list)


def _json_problems(meta, num_classes):
    """Problems visible in the metadata and the panoptic JSON itself: contiguous ids beyond
    num_classes, a missing or corrupt JSON, segments whose category id the metadata does not know
    (Detectron2's loader stops at the first of those with a bare KeyError)."""
    problems = []
    known = dict(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}))
    known.update(getattr(meta, "thing_dataset_id_to_contiguous_id", {}))
    if known and max(known.values()) >= num_classes:
        problems.append(
            f"metadata: contiguous class ids go up to {max(known.values())} but "
            f"MODEL.DETR.NUM_CLASSES is {num_classes}"
        )
    path = meta.get("panoptic_json")
    if path is None:
        return problems
    if not PathManager.exists(path):
        return problems + [f"{path}: panoptic JSON not found"]
    try:
        with PathManager.open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        return problems + [f"{path}: corrupt panoptic JSON ({e})"]
    for ann in data.get("annotations", []):
        unknown = sorted({s["category_id"] for s in ann.get("segments_info", [])} - set(known))
        if unknown:
            problems.append(
                f"{path}: {ann.get('file_name')}: category ids {unknown} are not in the metadata"
            )
    return problems


def check_dataset(name, num_classes, image_format="RGB", progress=None, max_pixels=None):
    """Read every record of the registered data set ``name`` as the training mapper does (image,
    panoptic PNG, semantic PNG when registered) and collect every problem. ``progress``: optional
    wrapper of the record iterator (e.g. tqdm). ``max_pixels``: the mapper's pixel limit
    (``INPUT.MAX_IMAGE_PIXELS``; 0: none, None: Pillow's). Returns a :class:`DatasetReport`, which
    also lists every image with an EXIF orientation other than 1."""
    report = DatasetReport(name)
    if name not in DatasetCatalog.list():
        report.problems.append(f"{name}: not a registered data set (DatasetCatalog)")
        return report
    report.problems += _json_problems(MetadataCatalog.get(name), num_classes)
    try:
        records = DatasetCatalog.get(name)
    except (
        Exception
    ) as e:  # the registration's loader: missing folders, unknown ids, corrupt JSON, ...
        report.problems.append(f"{name}: cannot load the data set ({type(e).__name__}: {e})")
        return report
    report.records = len(records)
    for record in progress(records) if progress else records:
        report.problems += _record_problems(record, num_classes, image_format, max_pixels, report)
    return report


def _record_problems(record, num_classes, image_format, max_pixels, report):
    problems = []
    orientation = 1
    try:
        image, orientation = read_image_with_orientation(
            record["file_name"], image_format, max_pixels
        )
        shape = image.shape[:2]
        expected = (record.get("height", shape[0]), record.get("width", shape[1]))
        if tuple(shape) != tuple(expected):
            problems.append(
                f"Image {record['file_name']} has size {shape}, its record says {expected}"
            )
    except (OSError, ValueError) as e:
        problems.append(str(e))
        shape = None
    segments = record.get("segments_info", [])
    png_name = record.get("pan_seg_file_name")
    if orientation != 1:
        report.exif.append(exif_frame_note(record["file_name"], png_name, orientation, shape))
    if png_name is not None:
        try:
            pan = read_panoptic_png(png_name, max_pixels)
            problems += panoptic_problems(
                segments,
                pan,
                shape or pan.shape,
                num_classes,
                png_name,
                orientation,
                record["file_name"],
            )
        except (OSError, ValueError) as e:
            problems.append(str(e))
    if "sem_seg_file_name" in record:
        sem = record["sem_seg_file_name"]
        if not PathManager.exists(sem):
            problems.append(f"Semantic PNG file not found: {sem}")
    if not any(not s.get("iscrowd", 0) for s in segments):
        report.empty += 1
    return problems
