"""The one image reader of the project (training and evaluation mappers, the data set checker,
``tools/demo.py``, the exported-model runtime): Pillow and numpy only.

* EXIF orientation applied exactly as Detectron2's ``detection_utils.read_image`` does: the image
  is used in its displayed frame, and every annotation must be in that frame too.
* Images of more than 8 bits per sample are scaled to 8 bits over the whole range of their type
  (never clipped at 255, as ``Image.convert`` does); see :func:`to_8bit`.
* Images above a pixel limit (Pillow's decompression-bomb guard) raise
  :class:`ImageTooLargeError` naming the file, its pixel count and how to allow it.
* Every error names the file: missing (``FileNotFoundError``), truncated, corrupt or not an image
  (``OSError``), empty (``ValueError``).
"""

import contextlib
import os
import threading

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "exif_orientation",
    "load_image",
    "open_image",
    "read_image",
    "to_8bit",
    "to_array",
]

# Where Pillow refuses an image by default: 2 * Image.MAX_IMAGE_PIXELS (89478485).
DEFAULT_MAX_IMAGE_PIXELS = 178956970
HOW_TO_ALLOW = (
    "if the file is trusted, raise the limit: INPUT.MAX_IMAGE_PIXELS in the config (training, "
    "evaluation, tools/demo.py, tools/check_dataset.py), --max-image-pixels of "
    "tools/run_exported.py, max_pixels= of detr_panoptic_runtime.read_image; 0 = no limit"
)
EXIF_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSE = {
    2: Image.FLIP_LEFT_RIGHT,
    3: Image.ROTATE_180,
    4: Image.FLIP_TOP_BOTTOM,
    5: Image.TRANSPOSE,
    6: Image.ROTATE_270,
    7: Image.TRANSVERSE,
    8: Image.ROTATE_90,
}
_PIL_LIMIT_LOCK = threading.Lock()


class ImageTooLargeError(ValueError):
    """An image with more pixels than the reader's limit (a decompression-bomb guard)."""


def exif_orientation(image_or_path, open_file=open):
    """The EXIF orientation (1..8; 1 when absent, unreadable or out of range) of a PIL image or an
    image file (only its header is read; errors name the file), as Detectron2 reads it
    (``getexif()``)."""
    if isinstance(image_or_path, (str, os.PathLike)):
        name = os.fspath(image_or_path)
        with _named_errors(name, "Image"), open_file(name, "rb") as f:
            return exif_orientation(_open_header(f))
    try:
        exif = image_or_path.getexif()
    except Exception:  # corrupt EXIF: Detectron2 ignores it too
        return 1
    orientation = exif.get(EXIF_ORIENTATION_TAG) if exif is not None else None
    return orientation if orientation in _EXIF_TRANSPOSE else 1


def to_8bit(image):
    """A PIL image with 8-bit samples, the range of its type scaled to 0..255:

    * 16-bit ("I;16", "I;16L", "I;16B", "I;16N": 16-bit grayscale PNG or TIFF): ``v >> 8``, as
      Pillow itself reads 16-bit RGB(A) PNG and TIFF files (already 8-bit "RGB" when opened);
    * "I" (32-bit signed, e.g. an int32 TIFF): ``v >> 23`` over [0, 2**31 - 1], negatives 0;
      but from PNG or PGM/PPM, which store at most 16 bits (Pillow opens 16-bit PGM as "I"):
      ``v >> 8`` over [0, 65535];
    * "F" (32-bit float): the float image convention [0, 1] → ``round(v * 255)``, values outside
      clipped.

    8-bit modes (1, L, P, RGB, RGBA, LA, CMYK, ...) are returned unchanged."""
    mode = image.mode
    if mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32) >> 8
    elif mode == "I":
        bits = 16 if image.format in ("PNG", "PPM") else 31
        values = np.clip(np.asarray(image).astype(np.int64), 0, (1 << bits) - 1) >> (bits - 8)
    elif mode == "F":
        values = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0)
    else:
        return image
    return Image.fromarray(values.astype(np.uint8), "L")


def _limit(max_pixels):
    """The pixel limit in force: ``max_pixels`` (0: none), or with None Pillow's own (2 *
    Image.MAX_IMAGE_PIXELS, none when that is None)."""
    if max_pixels is None:
        return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an integer >= 0 (0: no limit), got {max_pixels!r}")
    return max_pixels


@contextlib.contextmanager
def _pil_limit_lifted():
    """Pillow's global decompression-bomb check off while a header is parsed (our limit applies
    instead); a lock keeps two readers from restoring each other's value."""
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _named_errors(name, what):
    """Errors of reading ``name`` re-raised naming it: missing, or unreadable (corrupt, truncated,
    not an image: Pillow raises OSError/SyntaxError/ValueError with messages such as "image file
    is truncated" that name no file)."""
    try:
        yield
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} file not found: {name}") from e
    except ImageTooLargeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"{what} {name} cannot be read (corrupt or truncated?): {e}") from e


def open_image(path_or_file, what="Image", max_pixels=None, open_file=open):
    """The decoded PIL image of a file as stored (no EXIF orientation, no conversion).

    Args:
        path_or_file: a path, or a binary file object (named by its ``name`` in errors).
        what: how errors call the file ("Image", "Panoptic PNG", ...).
        max_pixels: refuse images of more pixels with :class:`ImageTooLargeError`; 0: no limit;
            None: Pillow's limit (2 * ``PIL.Image.MAX_IMAGE_PIXELS``).
        open_file: ``open_file(path, "rb")`` opens a path (e.g. Detectron2's ``PathManager.open``).
    """
    limit = _limit(max_pixels)
    is_path = isinstance(path_or_file, (str, os.PathLike))
    name = os.fspath(path_or_file) if is_path else getattr(path_or_file, "name", "<file object>")
    with _named_errors(name, what):
        if is_path:
            with open_file(path_or_file, "rb") as f:
                image = _decode(f, name, what, limit)
        else:
            image = _decode(path_or_file, name, what, limit)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{what} {name} is empty (size {image.width} x {image.height})")
    return image


def _open_header(f):
    """``Image.open(f)`` (the header only) whatever Pillow's own limit: the caller applies one."""
    start = f.tell()
    try:
        return Image.open(f)
    except Image.DecompressionBombError:  # above Pillow's limit: ours decides
        f.seek(start)
        with _pil_limit_lifted():
            return Image.open(f)


def _decode(f, name, what, limit):
    """The decoded image of the open file ``f``, refused above ``limit`` pixels (0: none)."""
    image = _open_header(f)
    w, h = image.size
    if limit and w * h > limit:
        raise ImageTooLargeError(
            f"{what} {name} has {w} x {h} = {w * h} pixels, more than the limit of {limit} "
            f"(decompression-bomb guard); {HOW_TO_ALLOW}"
        )
    image.load()
    return image


def load_image(path_or_file, max_pixels=None, open_file=open):
    """(PIL image in its displayed frame with 8-bit samples, EXIF orientation of the file); see
    :func:`open_image` for the arguments and errors. The displayed frame is Detectron2's
    (``_apply_exif_orientation``: the orientation's transposition, the tag kept)."""
    image = open_image(path_or_file, "Image", max_pixels, open_file)
    orientation = exif_orientation(image)
    image = to_8bit(image)  # before the transposition: it needs the file's format
    method = _EXIF_TRANSPOSE.get(orientation)
    return (image.transpose(method) if method is not None else image), orientation


def to_array(image, format="RGB"):
    """(H, W, C) uint8 array of an 8-bit PIL image in ``format`` ("RGB", "BGR", or a PIL mode
    such as "L"), as Detectron2's ``convert_PIL_to_numpy``."""
    if format not in ("RGB", "BGR") and format not in Image.MODES:
        raise ValueError(f"unsupported image format {format!r}: 'RGB', 'BGR' or a PIL mode")
    array = np.asarray(image.convert("RGB" if format == "BGR" else format))
    if array.ndim == 2:  # "L": Pillow drops the channel axis
        return array[:, :, None]
    return array[:, :, ::-1] if format == "BGR" else array


def read_image(path_or_file, format="RGB", max_pixels=None, open_file=open):
    """(H, W, C) uint8 image of a file in ``format``, EXIF orientation applied and non-8-bit
    samples scaled (:func:`to_8bit`). ``max_pixels``: see :func:`open_image` (None: Pillow's
    limit). Errors name the file: ``FileNotFoundError``, ``OSError`` (corrupt, truncated),
    ``ValueError`` (empty), :class:`ImageTooLargeError`."""
    image, _ = load_image(path_or_file, max_pixels, open_file)
    return to_array(image, format)
