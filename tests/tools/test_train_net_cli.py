"""tools/train_net.py as a command: --eval-only without weights evaluates a random model and says
so."""

import json

import pytest
from _cli import STAGE1, STAGE2, run_tool, tiny_opts

pytestmark = pytest.mark.slow


def test_eval_only_without_weights_warns_and_evaluates(cli_toy_root, tmp_path):
    out = tmp_path / "eval"
    opts = tiny_opts(out, toy_root=cli_toy_root) + [
        "MODEL.WEIGHTS",
        "",
        "MODEL.DETR.FROZEN_WEIGHTS",
        "",
    ]
    proc = run_tool("train_net.py", "--config-file", STAGE2, "--eval-only", *opts)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "RANDOMLY INITIALIZED" in proc.stdout, proc.stdout[-4000:]
    assert "MODEL.WEIGHTS" in proc.stdout
    # panoptic evaluation ran on the toy val split and printed its table
    assert "Panoptic Evaluation Results" in proc.stdout, proc.stdout[-4000:]
    assert (out / "config.yaml").is_file()  # default_setup wrote the config
    assert not list(out.glob("model_*.pth"))  # nothing was trained


def test_train_stage1_from_the_command_line(cli_toy_root, tmp_path):
    """The training path of the command (main_job.sh's): a couple of iterations write the final
    model."""
    out = tmp_path / "train"
    opts = tiny_opts(out, max_iter=2, toy_root=cli_toy_root)
    proc = run_tool("train_net.py", "--config-file", STAGE1, *opts)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (out / "model_final.pth").is_file()
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 1
    # the end-of-training evaluation of stage 1: box AP of the things (from the panoptic ground
    # truth)
    assert any("bbox/AP" in r for r in rows), rows[-1]
