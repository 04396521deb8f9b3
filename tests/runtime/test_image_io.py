"""The one image reader (detr_panoptic_runtime.image_io): EXIF orientation as Detectron2 applies
it, 8-bit conversion of 16/32-bit and float files as tools write them, the pixel limit, errors
naming the file; and the tools' output names."""

import cv2
import numpy as np
import pytest
from detectron2.data.detection_utils import read_image as d2_read_image
from PIL import Image

from detr_panoptic_runtime.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    exif_orientation,
    read_image,
)
from detr_panoptic_runtime.inputs import list_inputs, output_stems

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # non-square: 90° turns change the size
# the displayed (H, W) of a 20 x 30 stored image, per orientation
DISPLAYED = {o: (30, 20) if o >= 5 else (20, 30) for o in range(1, 9)}


def _save_with_orientation(path, image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


@pytest.mark.parametrize("ext", ["jpg", "png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_equals_detectron2(tmp_path, ext, orientation):
    path = str(tmp_path / f"x.{ext}")
    _save_with_orientation(path, Image.fromarray(RGB), orientation)
    assert exif_orientation(path) == orientation
    for fmt in ("RGB", "BGR", "L"):
        ours = read_image(path, fmt)
        assert ours.dtype == np.uint8 and ours.shape[:2] == DISPLAYED[orientation]
        assert np.array_equal(ours, d2_read_image(path, format=fmt)), (orientation, fmt)


def test_displayed_frame_of_each_orientation(tmp_path):
    """The pixels themselves: each orientation's transposition of a lossless stored image."""
    expected = {
        1: RGB,
        2: RGB[:, ::-1],
        3: RGB[::-1, ::-1],
        4: RGB[::-1],
        5: RGB.transpose(1, 0, 2),
        6: np.rot90(RGB, -1),
        7: RGB.transpose(1, 0, 2)[::-1, ::-1],
        8: np.rot90(RGB, 1),
    }
    for orientation, displayed in expected.items():
        path = str(tmp_path / f"o{orientation}.png")
        _save_with_orientation(path, Image.fromarray(RGB), orientation)
        assert np.array_equal(read_image(path), displayed), orientation


def test_no_exif_is_orientation_1(tmp_path):
    path = str(tmp_path / "plain.png")
    Image.fromarray(RGB).save(path)
    assert exif_orientation(path) == 1
    with Image.open(path) as image:
        assert exif_orientation(image) == 1


V16 = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], dtype=np.uint16)


def _gray(array):
    return np.repeat(array[:, :, None], 3, axis=2)


@pytest.mark.parametrize(
    "write",
    [
        lambda p: Image.fromarray(V16).save(p + ".png"),  # Pillow: "I;16" PNG
        lambda p: Image.fromarray(V16).save(p + ".tif"),  # Pillow: "I;16" TIFF
        lambda p: Image.fromarray(V16.astype(">u2")).save(p + ".tif"),  # "I;16B" TIFF
        lambda p: cv2.imwrite(p + ".png", V16),  # OpenCV uint16 PNG
        lambda p: cv2.imwrite(p + ".tif", V16),  # OpenCV uint16 TIFF
        lambda p: cv2.imwrite(p + ".pgm", V16),  # 16-bit PGM: Pillow opens it as "I"
    ],
    ids=["pil-png", "pil-tif", "pil-tif-be", "cv2-png", "cv2-tif", "cv2-pgm"],
)
def test_16bit_grayscale_scaled_not_clipped(tmp_path, write):
    write(str(tmp_path / "x"))
    (path,) = tmp_path.iterdir()
    expected = _gray((V16 >> 8).astype(np.uint8))  # 65535 → 255, 32768 → 128, 1000 → 3
    assert np.array_equal(read_image(str(path)), expected)
    assert np.array_equal(read_image(str(path), "L")[:, :, 0], expected[:, :, 0])


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_rgb_from_opencv(tmp_path, ext):
    bgr = np.stack([V16, V16[::-1], V16[:, ::-1]], axis=-1)
    path = str(tmp_path / f"x.{ext}")
    cv2.imwrite(path, bgr)
    assert np.array_equal(read_image(path, "BGR"), (bgr >> 8).astype(np.uint8))


def test_32bit_int_and_float_tiff(tmp_path):
    i32 = np.array([[-5, 0, 1 << 23, (1 << 31) - 1]], dtype=np.int32)
    Image.fromarray(i32).save(tmp_path / "i.tif")
    assert read_image(str(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 0, 1, 255]
    f32 = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    Image.fromarray(f32).save(tmp_path / "f.tif")
    assert read_image(str(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGBA", "LA", "CMYK"])
def test_8bit_modes_as_detectron2(tmp_path, mode):
    image = Image.fromarray(RGB).convert(mode)
    path = str(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"))
    image.save(path)
    ours = read_image(path)
    assert np.array_equal(ours, d2_read_image(path, format="RGB"))
    assert np.array_equal(ours, np.asarray(image.convert("RGB")))
    if mode == "L":
        assert np.array_equal(ours, _gray(np.asarray(image)))
    if mode == "RGBA":  # the alpha channel dropped, colours kept
        assert np.array_equal(ours, RGB)


def test_pixel_limit_names_the_file(tmp_path):
    path = str(tmp_path / "big.png")
    Image.fromarray(RGB).save(path)  # 600 pixels
    with pytest.raises(ImageTooLargeError) as e:
        read_image(path, max_pixels=599)
    msg = str(e.value)
    assert path in msg and "600 pixels" in msg and "limit of 599" in msg
    assert "INPUT.MAX_IMAGE_PIXELS" in msg and "--max-image-pixels" in msg
    assert read_image(path, max_pixels=600).shape == (20, 30, 3)
    assert read_image(path, max_pixels=0).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 0"):
        read_image(path, max_pixels=-1)
    assert DEFAULT_MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS


def test_pillow_decompression_bomb_becomes_a_named_error(tmp_path, monkeypatch):
    """Pillow refuses above 2 * MAX_IMAGE_PIXELS with DecompressionBombError, naming no file: the
    reader names it; an explicit larger limit (or 0) reads it, and Pillow's setting is restored."""
    path = str(tmp_path / "bomb.png")
    Image.fromarray(RGB).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above 200 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    with pytest.raises(ImageTooLargeError) as e:
        read_image(path)  # default: Pillow's limit
    assert path in str(e.value) and "600 pixels" in str(e.value) and "limit of 200" in str(e.value)
    assert not isinstance(e.value, Image.DecompressionBombError)
    for limit in (0, 600):
        assert np.array_equal(read_image(path, max_pixels=limit), RGB)
    assert exif_orientation(path) == 1  # the header only: no limit
    assert Image.MAX_IMAGE_PIXELS == 100


def test_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match=f"Image file not found: {missing}"):
        read_image(missing)
    with pytest.raises(FileNotFoundError, match=f"Image file not found: {missing}"):
        exif_orientation(missing)
    path = tmp_path / "x.jpg"
    Image.fromarray(RGB).save(path, quality=95)
    data = path.read_bytes()
    for bad in (data[: len(data) // 2], b"not an image", b""):
        path.write_bytes(bad)
        with pytest.raises(OSError, match=f"Image {path} cannot be read"):
            read_image(str(path))


def test_reads_file_objects(tmp_path):
    path = tmp_path / "x.png"
    _save_with_orientation(path, Image.fromarray(RGB), 6)
    with open(path, "rb") as f:
        assert np.array_equal(read_image(f), np.rot90(RGB, -1))


def test_output_stems_never_collide(tmp_path):
    for folder in ("a", "b", "b/c"):
        (tmp_path / folder).mkdir()
        for name in ("1.jpg", "2.png"):
            (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "b" / "2.jpg").write_bytes(b"")
    files = list_inputs([tmp_path / "a", tmp_path / "b", str(tmp_path / "b" / "c" / "*.jpg")])
    files += list_inputs([tmp_path / "a" / "1.jpg"])  # twice: kept once
    files = list_inputs(files)
    assert output_stems(files) == ["a/1", "a/2", "b/1", "b/2.jpg", "b/2.png", "b/c/1"]
    assert output_stems(list_inputs([tmp_path / "a"])) == ["1", "2"]
    with pytest.raises(FileNotFoundError, match="no_such"):
        list_inputs([tmp_path / "no_such"])
