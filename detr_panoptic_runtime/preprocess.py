"""Reading an image and the test resize, exactly as Detectron2's evaluation path does it
(``detection_utils.read_image`` + ``ResizeShortestEdge`` → ``ResizeTransform`` with PIL's bilinear
resize of uint8 images), so that an exported model sees the same pixels as ``tools/train_net.py
--eval-only``."""

import numpy as np
from PIL import Image

__all__ = ["read_image", "resized_shape", "resize_image", "preprocess"]

_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {
    2: Image.FLIP_LEFT_RIGHT,
    3: Image.ROTATE_180,
    4: Image.FLIP_TOP_BOTTOM,
    5: Image.TRANSPOSE,
    6: Image.ROTATE_270,
    7: Image.TRANSVERSE,
    8: Image.ROTATE_90,
}


def _apply_exif_orientation(image):
    """As Detectron2's ``_apply_exif_orientation``: the EXIF orientation applied, the tag kept."""
    try:
        exif = image.getexif()
    except Exception:
        return image
    method = _EXIF_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION)) if exif is not None else None
    return image.transpose(method) if method is not None else image


def read_image(path_or_file):
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied (Detectron2's
    ``read_image``)."""
    with Image.open(path_or_file) as image:
        image = _apply_exif_orientation(image)
        return np.asarray(image.convert("RGB"))


def resized_shape(h, w, min_size, max_size):
    """``ResizeShortestEdge.get_output_shape``: the short side to ``min_size``, the long side at
    most ``max_size``, rounded half up. ``min_size`` 0: no resize."""
    if min_size == 0:
        return h, w
    size = min_size * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(image, size):
    """(H, W, 3) uint8 → (h, w, 3) uint8 with PIL's bilinear resize
    (``ResizeTransform.apply_image``)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def preprocess(image, min_size, max_size):
    """(H, W, 3) uint8 RGB → the model input (3, h, w) uint8 RGB (contiguous) after the test
    resize."""
    size = resized_shape(image.shape[0], image.shape[1], min_size, max_size)
    if min_size != 0:  # ResizeTransform resizes even to the same size (PIL then copies)
        image = resize_image(image, size)
    return np.ascontiguousarray(image.transpose(2, 0, 1))
