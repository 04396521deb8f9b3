"""The official R-50 panoptic layout (random values), converted, exported in both formats with the
two commands and run without Detectron2: the graphs' outputs match the eager model's, and
run_exported.py writes what the runtime computes.

(With random official weights the decoder's outputs, and so the masks, of all 100 queries are equal
to ~1e-7: which query owns a pixel is decided by float rounding there, which differs even between
two eager runs that compute masks for different numbers of queries. Pixel equality with the eager
model is tested on the toy model of test_export.py, whose masks differ between queries.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import as_torch, eager_graph_outputs
from test_export_cli import BLOCK_ALWAYS, run_blocked
from tiny_toy import REPO

from detr_panoptic_runtime import ExportedPanopticModel, rgb2id

CONFIG = os.path.join(REPO, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage2.yaml")
SMALL = ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "MODEL.DEVICE", "cpu"]


@pytest.mark.slow
def test_official_r50_layout_exports_and_runs(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model
    from official_layout import write_official_checkpoint

    from detr_panoptic_d2 import add_detr_panoptic_config
    from detr_panoptic_d2.checkpoint import DetrCheckpointer, convert_detr_checkpoint

    # an official checkpoint (random values), its class head made confident so that queries pass
    # 0.85
    src = str(tmp_path / "detr-r50-panoptic.pth")
    write_official_checkpoint(src, panoptic=True, seed=11)
    ckpt = torch.load(src, weights_only=False)
    ckpt["model"]["detr.class_embed.weight"] *= 15.0
    torch.save(ckpt, src)
    converted = str(tmp_path / "detr_r50_panoptic.pth")
    convert_detr_checkpoint(src, converted)

    rng = np.random.default_rng(0)
    image_path = str(tmp_path / "street.png")
    Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)).save(image_path)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="2")
    opts = ["MODEL.WEIGHTS", converted, *SMALL]
    for fmt in ("torchscript", "onnx"):
        cmd = [sys.executable, os.path.join(REPO, "tools", "export_model.py")]
        cmd += ["--config-file", CONFIG, "--format", fmt, "--output", str(tmp_path / fmt), *opts]
        res = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert res.returncode == 0, res.stdout[-3000:]
        res = run_blocked(
            os.path.join(REPO, "tools", "run_exported.py"),
            ["--model", tmp_path / fmt, "--input", image_path, "--output", tmp_path / f"out_{fmt}"],
            BLOCK_ALWAYS,
            cwd=str(tmp_path),
        )
        assert res.returncode == 0, res.stdout[-3000:]

    # the eager model on the same image, as tools/train_net.py --eval-only / DefaultPredictor feed
    # it
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(opts)
    model = build_model(cfg).eval()
    DetrCheckpointer(model).load(converted)
    image = read_image(image_path, format="RGB")
    resized = T.ResizeShortestEdge(128, 192).get_transform(image).apply_image(image)
    x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        ids, info = model([{"image": x, "height": 150, "width": 230}])[0]["panoptic_seg"]
    assert len(info) > 0
    meta = json.load(open(tmp_path / "onnx" / "deploy.json"))
    assert meta["num_classes"] == 133 and sum(meta["is_thing"]) == 80
    assert meta["dataset_category_ids"][:3] == [1, 2, 3] and meta["dataset_category_ids"][-1] == 200
    for fmt in ("torchscript", "onnx"):
        runner = ExportedPanopticModel(str(tmp_path / fmt))
        _, r_ids, r_info = runner.predict_file(image_path)
        png = np.asarray(Image.open(tmp_path / f"out_{fmt}" / "street.png").convert("RGB"))
        assert np.array_equal(rgb2id(png), r_ids) and r_ids.shape == ids.shape
        written = json.load(open(tmp_path / f"out_{fmt}" / "street.json"))["segments_info"]
        assert [(s["id"], s["category_id"], s["isthing"]) for s in written] == [
            (s["id"], s["category_id"], s["isthing"]) for s in r_info
        ]
        assert len(r_info) > 0
    for fmt in ("torchscript", "onnx"):
        # the graph's outputs against the eager modules
        out = as_torch(ExportedPanopticModel(str(tmp_path / fmt)).run_graph(x.numpy()))
        ref = eager_graph_outputs(model, x)
        assert torch.equal(out[3], ref[3]) and len(ref[3]) > 0
        for a, b, tol in zip(out[:3], ref[:3], (1e-4, 1e-4, 1e-3)):
            torch.testing.assert_close(a, b, rtol=0, atol=tol)
