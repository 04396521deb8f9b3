"""tools/check_dataset.py: exit 0 and counts on a clean set, exit 1 and every problem named on a
broken one or above INPUT.MAX_IMAGE_PIXELS."""

import shutil

import pytest
from _cli import STAGE1, run_tool, tiny_opts

pytestmark = pytest.mark.slow


def test_check_dataset_cli(cli_toy_root, tmp_path):
    proc = run_tool(
        "check_dataset.py", "--config-file", STAGE1, *tiny_opts(tmp_path, toy_root=cli_toy_root)
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "toy_panoptic_train: 8 records, 0 problem(s)" in proc.stdout
    assert "toy_panoptic_val: 4 records, 0 problem(s)" in proc.stdout
    assert "0 with an EXIF orientation" in proc.stdout

    # the config's pixel limit reaches the checker: every image and panoptic PNG above it is named
    proc = run_tool(
        "check_dataset.py", "--config-file", STAGE1, "--dataset", "toy_panoptic_val",
        *tiny_opts(tmp_path, toy_root=cli_toy_root), "INPUT.MAX_IMAGE_PIXELS", "100",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert proc.stdout.count("pixels, more than the limit of 100") == 8, proc.stdout[-3000:]
    assert "INPUT.MAX_IMAGE_PIXELS" in proc.stdout

    broken = tmp_path / "broken"
    shutil.copytree(cli_toy_root, broken)
    image = broken / "val" / "images" / "000002.jpg"
    image.write_bytes(image.read_bytes()[:300])
    (broken / "val" / "panoptic" / "000003.png").unlink()
    proc = run_tool(
        "check_dataset.py", "--config-file", STAGE1, "--dataset", "toy_panoptic_val",
        *tiny_opts(tmp_path, toy_root=broken),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert f"Image {image} cannot be read" in proc.stdout
    assert (
        "000003.png" in proc.stdout and "toy_panoptic_val: 4 records, 2 problem(s)" in proc.stdout
    )
