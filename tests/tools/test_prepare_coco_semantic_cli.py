"""tools/prepare_coco_semantic.py remakes the semantic PNGs of *_with_sem_seg from the panoptic
annotations."""

import shutil

import numpy as np
from _cli import run_tool
from dataset_layouts import write_layout
from PIL import Image


def test_remakes_the_semantic_pngs(tmp_path):
    root = tmp_path / "d2"
    write_layout(root, "coco", num_train=1, num_val=3, image_size=(64, 96))
    expected = root / "coco" / "panoptic_semseg_val2017"
    kept = tmp_path / "expected"
    shutil.move(expected, kept)
    proc = run_tool(
        "prepare_coco_semantic.py", "--root", root, "--splits", "val2017", "--num-workers", "0"
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    names = sorted(p.name for p in kept.glob("*.png"))
    assert names and names == sorted(p.name for p in expected.glob("*.png"))
    for name in names:
        assert np.array_equal(
            np.asarray(Image.open(kept / name)), np.asarray(Image.open(expected / name))
        )
    missing = run_tool("prepare_coco_semantic.py", "--root", tmp_path / "nowhere")
    assert missing.returncode == 2 and "panoptic_val2017.json" in missing.stdout
