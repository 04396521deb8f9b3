"""The command-line tools refuse a checkpoint that leaves part of the model uninitialized at
inference (a stage-1 checkpoint under the stage-2 config): the error names the mask head, its
tensor count and the file. train_net.py's CUDA fallback says so in one warning line."""

import pytest
import torch
from _cli import STAGE1, run_tool, tiny_opts
from detectron2.modeling import build_model
from tiny_toy import tiny_cfg, unregister_toy

from detr_panoptic_d2.modeling import DetrPanoptic  # noqa: F401  (registers the meta-arch)

pytestmark = pytest.mark.slow

STAGE2 = STAGE1.replace("stage1", "stage2")


@pytest.fixture
def stage1_file(cli_toy_root, tmp_path):
    """A stage-1 checkpoint of the tiny toy model (random weights) and its mask-head key count
    under the stage-2 config."""
    unregister_toy()
    try:
        torch.manual_seed(0)
        model = build_model(tiny_cfg(tmp_path / "s1", toy_root=cli_toy_root))
        stage2 = build_model(tiny_cfg(tmp_path / "s1", stage=2, toy_root=cli_toy_root))
    finally:
        unregister_toy()
    path = tmp_path / "stage1" / "model_final.pth"
    path.parent.mkdir()
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    return path, sum(1 for k in stage2.state_dict() if k.startswith("mask_head."))


def _assert_refused(proc, path, count):
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "UninitializedParametersError" in proc.stdout, proc.stdout[-4000:]
    assert f"mask_head.* ({count} tensors) missing from {path}" in proc.stdout
    assert "stage-1 checkpoint" in proc.stdout


def test_train_net_eval_only_refuses_a_stage1_checkpoint_and_warns_once_for_cuda(
    cli_toy_root, tmp_path, stage1_file
):
    path, count = stage1_file
    opts = tiny_opts(tmp_path / "eval", toy_root=cli_toy_root)
    opts += ["MODEL.WEIGHTS", path, "MODEL.DEVICE", "cuda"]
    proc = run_tool("train_net.py", "--config-file", STAGE2, "--eval-only", *opts)
    _assert_refused(proc, path, count)
    if not torch.cuda.is_available():
        warnings = [
            line
            for line in proc.stdout.splitlines()
            if "WARNING" in line and "MODEL.DEVICE" in line
        ]
        assert len(warnings) == 1, warnings
        assert "CUDA is not available, running on the CPU" in warnings[0]


def test_export_refuses_a_stage1_checkpoint(cli_toy_root, tmp_path, stage1_file):
    path, count = stage1_file
    opts = tiny_opts(tmp_path / "cfg", toy_root=cli_toy_root) + ["MODEL.WEIGHTS", path]
    out = tmp_path / "exported"
    proc = run_tool(
        "export_model.py", "--config-file", STAGE2, "--format", "torchscript", "--output", out,
        *opts,
    )  # fmt: skip
    _assert_refused(proc, path, count)
    assert not (out / "model.ts").exists()


def test_demo_refuses_a_stage1_checkpoint(cli_toy_root, tmp_path, stage1_file):
    path, count = stage1_file
    opts = tiny_opts(tmp_path / "cfg", toy_root=cli_toy_root) + ["MODEL.WEIGHTS", path]
    out = tmp_path / "vis"
    proc = run_tool(
        "demo.py", "--config-file", STAGE2, "--dataset", "toy_panoptic_val", "--num", "1",
        "--output", out, *opts,
    )  # fmt: skip
    _assert_refused(proc, path, count)
    assert not list(out.glob("*.png"))
