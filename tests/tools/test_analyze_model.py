"""tools/analyze_model.py: its FLOP count agrees with the benchmarks' own (torch.utils.flop_counter
on the eager model) for R-50 at 800x1088, and every task runs on every shipped config, YAML and
LazyConfig."""

import glob
import importlib.util
import os
import re
import sys

import pytest
import torch
from _cli import REPO, run_tool, tiny_opts
from detectron2.modeling import build_model
from tiny_toy import tiny_lazy_opts

from detr_panoptic_d2 import model_zoo

pytestmark = pytest.mark.slow


def _tool():
    spec = importlib.util.spec_from_file_location(
        "analyze_model", os.path.join(REPO, "tools", "analyze_model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count_flops():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        from common import count_flops
    finally:
        sys.path.pop(0)
    return count_flops


def test_flops_of_r50_agree_with_the_benchmarks_count():
    """Same model, same 800x1088 image: the tool's multiply-adds x 2 against the benchmarks' FLOPs
    of the whole eager inference (``model(batch)``, 2 per multiply-add, its own counter). The tool
    counts the network only, so the two differ by what the post-processing would count. Every
    query is kept so that the mask head's share (computed on the queries the post-processor
    reads, in both) is large."""
    tool = _tool()
    cfg = model_zoo.get_config("COCO-PanopticSegmentation/detr_R_50_stage2.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = 800, 1088
    batch = [{"image": torch.randint(0, 256, (3, h, w)).float(), "height": h, "width": w}]
    with torch.no_grad():
        need = model.postprocessor.select(
            model.detr(*tool.network_inputs(model, batch))[0]["pred_logits"][0]
        ).needs_mask
        assert int(need.sum()) > 10  # the mask head runs on many queries
        fvcore_gmac = tool.do_flop(model, [batch])
    bench_gflop = _count_flops()(lambda: model(batch)) / 1e9
    ratio = 2 * fvcore_gmac / bench_gflop
    assert abs(ratio - 1) < 0.05, (2 * fvcore_gmac, bench_gflop)
    # and without a mask head (stage 1): the network alone
    cfg1 = model_zoo.get_config("COCO-PanopticSegmentation/detr_R_50_stage1.yaml")
    cfg1.MODEL.DEVICE, cfg1.MODEL.WEIGHTS = "cpu", ""
    model1 = build_model(cfg1).eval()
    with torch.no_grad():
        fvcore1 = tool.do_flop(model1, [batch])
    bench1 = _count_flops()(lambda: model1(batch)) / 1e9
    assert abs(2 * fvcore1 / bench1 - 1) < 0.05, (2 * fvcore1, bench1)
    assert fvcore1 < fvcore_gmac  # the mask head counted in stage 2


SHIPPED = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "*", "*.*"))
    if not os.path.basename(p).startswith("Base-")
)


@pytest.mark.parametrize("config", SHIPPED)
def test_every_task_on_every_shipped_config(config, cli_toy_root, tmp_path):
    lazy = config.endswith(".py")
    toy = "/toy/" in f"/{config}"
    if toy:  # inputs from the toy test loader (the tiny toy set)
        opts = (tiny_lazy_opts if lazy else tiny_opts)(tmp_path / "out", toy_root=cli_toy_root)
        inputs = ["--num-inputs", "2"]
    else:  # no COCO here: random images; no ImageNet download
        opts = ["train.init_checkpoint="] if lazy else ["MODEL.WEIGHTS", ""]
        inputs = ["--input-size", "64", "96"]
    tasks = ["flop", "activation", "parameter", "structure"]
    proc = run_tool("analyze_model.py", "--config-file", config, "--tasks", *tasks, *inputs, *opts)
    assert proc.returncode == 0, proc.stdout[-4000:]
    gmac = float(
        re.search(r"Total GFlops \(one per multiply-add.*?\): ([0-9.]+)", proc.stdout).group(1)
    )
    activations = float(re.search(r"Total \(Million\) Activations: ([0-9.]+)", proc.stdout)[1])
    assert gmac > 0 and activations > 0
    assert "detr.backbone" in proc.stdout  # the parameter table
    assert "DetrPanoptic(" in proc.stdout  # the structure
    if "stage2" in config:
        assert "mask_head" in proc.stdout
