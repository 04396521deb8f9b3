"""Reading an image and the test resize, exactly as Detectron2's evaluation path does it (the
project's one reader :func:`.image_io.read_image`, which the dataset mapper uses too, +
``ResizeShortestEdge`` → ``ResizeTransform`` with PIL's bilinear resize of uint8 images), so that an
exported model sees the same pixels as ``tools/train_net.py --eval-only``. ``read_image(path,
max_pixels=N)`` sets the decompression-bomb limit (None: Pillow's, 0: none)."""

import numpy as np
from PIL import Image

from .image_io import read_image

__all__ = ["read_image", "resized_shape", "resize_image", "preprocess"]


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
