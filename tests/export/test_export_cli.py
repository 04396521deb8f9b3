"""tools/export_model.py and tools/run_exported.py as a user runs them; run_exported.py with
Detectron2 and this plugin made unimportable (and torch too for ONNX), so that it needs only what it
claims."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tiny_toy
import torch
from _export_helpers import export_cfg
from PIL import Image
from tiny_toy import REPO

from detr_panoptic_runtime import ExportedPanopticModel, rgb2id

BLOCK_ALWAYS = [
    "detectron2",
    "detr_panoptic_d2",
    "torchvision",
    "cv2",
    "scipy",
    "pycocotools",
    "panopticapi",
    "fvcore",
    "matplotlib",
]
# installs an import hook refusing the given top-level packages, then runs the script as __main__
_RUNNER = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked for this test")
sys.meta_path.insert(0, Block())
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
assert not leaked, leaked
"""


def run_blocked(script, args, blocked, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, ",".join(blocked), script, *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def val_images(toy_root):
    folder = os.path.join(toy_root, "val", "images")
    return folder, sorted(os.listdir(folder))


@pytest.mark.parametrize(
    "key,blocked",
    [
        ("ts", BLOCK_ALWAYS + ["onnxruntime", "onnx", "tqdm"]),
        ("onnx", BLOCK_ALWAYS + ["torch"]),
    ],
)
def test_run_exported_without_detectron2(exported, export_toy_root, tmp_path, key, blocked):
    folder, names = val_images(export_toy_root)
    out = tmp_path / "out"
    script = os.path.join(REPO, "tools", "run_exported.py")
    res = run_blocked(
        script,
        ["--model", exported[key], "--input", folder, "--output", out, "--visualize"],
        blocked,
        cwd=str(tmp_path),  # not the repository: the script finds the runtime next to itself
    )
    assert res.returncode == 0, res.stdout
    if "tqdm" in blocked:  # the plain counter instead of a progress bar
        assert f"images: {len(names)}/{len(names)}" in res.stdout
    runner = ExportedPanopticModel(exported[key])
    for name in names:
        stem = os.path.splitext(name)[0]
        _, ids, info = runner.predict_file(os.path.join(folder, name))
        png = np.asarray(Image.open(out / f"{stem}.png").convert("RGB"))
        assert np.array_equal(rgb2id(png), ids)
        written = json.load(open(out / f"{stem}.json"))
        meta = runner.meta
        for s in info:
            s["dataset_category_id"] = meta["dataset_category_ids"][s["category_id"]]
        assert written["segments_info"] == pytest.approx(info)
        assert set(written["segments_info"][0]) >= {"id", "category_id", "isthing", "score"}
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size == (ids.shape[1], ids.shape[0])


def test_export_then_run_as_a_user(tmp_path, export_toy_root):
    """The two commands with a checkpoint and command-line overrides, against the eager model's
    Detectron2 inference on the same image (default merge "detr", threshold 0.85)."""
    from _export_helpers import segment_model
    from detectron2.checkpoint import DetectionCheckpointer

    from detr_panoptic_d2.engine import DetrPanopticTrainer

    cfg = export_cfg(str(tmp_path), export_toy_root)
    model = segment_model(cfg, seed=3)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    opts = tiny_toy.tiny_opts(str(tmp_path), toy_root=export_toy_root)
    opts += ["MODEL.WEIGHTS", str(tmp_path / "weights.pth")]
    opts += [
        "MODEL.DETR.TEST.PANOPTIC_MERGE",
        "detr",
        "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD",
        "0.85",
    ]
    folder, names = val_images(export_toy_root)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    for fmt in ("onnx", "torchscript"):
        cmd = [sys.executable, os.path.join(REPO, "tools", "export_model.py")]
        cmd += ["--config-file", tiny_toy.STAGE2, "--format", fmt, "--output", tmp_path / fmt]
        cmd += ["--sample-image", os.path.join(folder, names[0]), *opts]
        res = subprocess.run(
            [str(c) for c in cmd],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stdout
        assert "max |Δ| logits" in res.stdout
        assert sorted(os.listdir(tmp_path / fmt)) == sorted(
            ["deploy.json", "model.onnx" if fmt == "onnx" else "model.ts"]
        )
        res = run_blocked(
            os.path.join(REPO, "tools", "run_exported.py"),
            ["--model", tmp_path / fmt, "--input", folder, "--output", tmp_path / f"out_{fmt}"],
            BLOCK_ALWAYS,
            cwd=str(tmp_path),
        )
        assert res.returncode == 0, res.stdout
    # the eager model, loaded from the same checkpoint, through Detectron2's test loader
    from detectron2.modeling import build_model

    eager = build_model(cfg).eval()
    DetectionCheckpointer(eager).load(str(tmp_path / "weights.pth"))
    segments = 0
    for inputs in DetrPanopticTrainer.build_test_loader(cfg, "toy_panoptic_val"):
        with torch.no_grad():
            ids, info = eager(inputs)[0]["panoptic_seg"]
        stem = os.path.splitext(os.path.basename(inputs[0]["file_name"]))[0]
        for fmt in ("onnx", "torchscript"):
            png = np.asarray(Image.open(tmp_path / f"out_{fmt}" / f"{stem}.png").convert("RGB"))
            # identical but where two of this random model's masks tie to float rounding
            differ = int((rgb2id(png) != ids.numpy()).sum())
            assert differ <= 0.01 * ids.numel(), (fmt, stem, differ)
            written = json.load(open(tmp_path / f"out_{fmt}" / f"{stem}.json"))["segments_info"]
            assert [(s["id"], s["category_id"], s["isthing"]) for s in written] == [
                (s["id"], s["category_id"], s["isthing"]) for s in info
            ]
        segments += len(info)
    assert segments > 0


def test_run_exported_same_stems_and_unreadable_files(exported, export_toy_root, tmp_path):
    """a/1.jpg and b/1.jpg get out/a/1.* and out/b/1.*, each the prediction of its own image; a
    corrupt file is skipped and named, the others still written, and the exit status is 1. An
    unavailable ONNX Runtime provider is named in a warning."""
    import onnxruntime

    folder, names = val_images(export_toy_root)
    for sub, name in (("a", names[0]), ("b", names[1])):
        (tmp_path / "in" / sub).mkdir(parents=True)
        (tmp_path / "in" / sub / "1.jpg").write_bytes(open(os.path.join(folder, name), "rb").read())
    (tmp_path / "in" / "b" / "2.jpg").write_bytes(b"not a JPEG")
    out = tmp_path / "out"
    res = run_blocked(
        os.path.join(REPO, "tools", "run_exported.py"),
        ["--model", exported["onnx"], "--input", tmp_path / "in" / "a", tmp_path / "in" / "b",
         "--output", out, "--providers", "CUDAExecutionProvider,CPUExecutionProvider"],
        BLOCK_ALWAYS + ["torch"],
        cwd=str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 1, res.stdout
    assert f"skipped: Image {tmp_path / 'in' / 'b' / '2.jpg'} cannot be read" in res.stdout
    assert "1 file(s) could not be read" in res.stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a", "a/1.json", "a/1.png", "b", "b/1.json", "b/1.png"
    ]  # fmt: skip
    runner = ExportedPanopticModel(exported["onnx"])
    written = {}
    for sub, name in (("a", names[0]), ("b", names[1])):
        _, ids, _ = runner.predict_file(os.path.join(folder, name))
        written[sub] = rgb2id(np.asarray(Image.open(out / sub / "1.png").convert("RGB")))
        assert np.array_equal(written[sub], ids), sub
    assert not np.array_equal(written["a"], written["b"])
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "warning: --providers CUDAExecutionProvider not available" in res.stdout
