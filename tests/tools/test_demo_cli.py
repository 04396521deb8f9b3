"""tools/demo.py as a command: pictures for a registered data set (with --explain) and for an input
folder; clear errors for bad arguments."""

import shutil

import numpy as np
import pytest
from _cli import STAGE2, run_tool, tiny_opts

pytestmark = pytest.mark.slow


def _opts(tmp_path, toy_root):
    # a random (untrained) stage-2 model: no weights, nothing frozen
    return tiny_opts(tmp_path / "cfg_out", toy_root=toy_root) + [
        "MODEL.WEIGHTS",
        "",
        "MODEL.DETR.FROZEN_WEIGHTS",
        "",
    ]


def test_demo_on_dataset_with_explain(cli_toy_root, tmp_path):
    out = tmp_path / "vis"
    proc = run_tool(
        "demo.py",
        "--config-file",
        STAGE2,
        "--dataset",
        "toy_panoptic_val",
        "--num",
        "2",
        "--explain",
        "--confidence-threshold",
        "0.0",
        "--output",
        out,
        *_opts(tmp_path, cli_toy_root),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["000001.png", "000001_queries.png", "000002.png", "000002_queries.png"], names
    from PIL import Image

    for stem in ("000001", "000002"):
        picture = Image.open(out / f"{stem}.png")
        original = Image.open(f"{cli_toy_root}/val/images/{stem}.jpg")
        # ground truth and prediction side by side: wider than two images
        assert picture.width >= 2 * original.width and picture.height >= original.height
        assert Image.open(out / f"{stem}_queries.png").size[0] > 0
    assert "wrote 2 picture(s)" in proc.stdout


def test_demo_on_input_folder(cli_toy_root, tmp_path):
    src = tmp_path / "inputs"
    src.mkdir()
    for stem in ("000001", "000003"):
        shutil.copy(f"{cli_toy_root}/val/images/{stem}.jpg", src / f"img_{stem}.jpg")
    (src / "notes.txt").write_text("not an image")  # ignored: not an image extension
    out = tmp_path / "vis"
    proc = run_tool(
        "demo.py",
        "--config-file",
        STAGE2,
        "--input",
        src,
        "--output",
        out,
        *_opts(tmp_path, cli_toy_root),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert sorted(p.name for p in out.glob("*.png")) == ["img_000001.png", "img_000003.png"]


def test_demo_missing_input_names_the_path(cli_toy_root, tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = run_tool(
        "demo.py",
        "--config-file",
        STAGE2,
        "--input",
        missing,
        "--output",
        tmp_path / "vis",
        *_opts(tmp_path, cli_toy_root),
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stdout, proc.stdout[-4000:]


def test_demo_needs_input_or_dataset(tmp_path):
    proc = run_tool("demo.py", "--config-file", STAGE2, "--output", tmp_path / "vis")
    assert proc.returncode == 2
    assert "give either --input or --dataset" in proc.stdout


def test_demo_skips_unreadable_files_and_fails_at_the_end(cli_toy_root, tmp_path):
    """A truncated and a corrupt image in a folder: skipped with a message naming each, the images
    after them still get their pictures, and the exit status says something went wrong."""
    src = tmp_path / "inputs"
    src.mkdir()
    good = open(f"{cli_toy_root}/val/images/000001.jpg", "rb").read()
    (src / "a_good.jpg").write_bytes(good)
    (src / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "c_corrupt.jpg").write_bytes(b"definitely not a JPEG")
    (src / "d_good.jpg").write_bytes(good)
    out = tmp_path / "vis"
    proc = run_tool(
        "demo.py", "--config-file", STAGE2, "--input", src, "--output", out,
        *_opts(tmp_path, cli_toy_root),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert sorted(p.name for p in out.glob("*.png")) == ["a_good.png", "d_good.png"]
    for bad in ("b_truncated.jpg", "c_corrupt.jpg"):
        assert f"skipped: Image {src / bad} cannot be read" in proc.stdout, proc.stdout[-4000:]
    assert "wrote 2 picture(s)" in proc.stdout and "2 file(s) could not be read" in proc.stdout


def test_demo_same_stem_inputs_keep_their_folders(cli_toy_root, tmp_path):
    """a/1.jpg and b/1.jpg: two pictures, out/a/1.png and out/b/1.png, of different images. Asked
    for MODEL.DEVICE cuda without CUDA, the demo runs on cpu and says so in one warning."""
    import torch
    from PIL import Image

    for folder, stem in (("a", "000001"), ("b", "000003")):
        (tmp_path / "inputs" / folder).mkdir(parents=True)
        shutil.copy(f"{cli_toy_root}/val/images/{stem}.jpg", tmp_path / "inputs" / folder / "1.jpg")
    out = tmp_path / "vis"
    proc = run_tool(
        "demo.py", "--config-file", STAGE2,
        "--input", tmp_path / "inputs" / "a" / "1.jpg", tmp_path / "inputs" / "b",
        "--output", out, *_opts(tmp_path, cli_toy_root), "MODEL.DEVICE", "cuda",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["a/1.png", "b/1.png"]
    a, b = (np.asarray(Image.open(out / f"{x}/1.png")) for x in "ab")
    assert a.shape != b.shape or not np.array_equal(a, b)
    if not torch.cuda.is_available():
        warnings = [line for line in proc.stdout.splitlines() if "CUDA is not available" in line]
        assert len(warnings) == 1 and "MODEL.DEVICE cuda" in warnings[0], proc.stdout[-4000:]
