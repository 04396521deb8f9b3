"""tools/lazyconfig_train_net.py on the LazyConfig toy twins: stage 1 (bf16 AMP, a time budget) →
stage 2 (``model.frozen_weights``) → --eval-only, with the YAML path's evaluators: the same PQ
as tools/train_net.py --eval-only on the same checkpoint."""

import json
import os

import pytest
from _cli import REPO, STAGE2, run_tool, tiny_opts
from tiny_toy import tiny_lazy_opts

pytestmark = pytest.mark.slow

LAZY1 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage1.py")
LAZY2 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage2.py")


def _pq(stdout):
    """{metric: value} of the panoptic table's "All" row (print_csv_format's copypaste lines)."""
    lines = stdout.splitlines()
    at = max(i for i, line in enumerate(lines) if "Task: panoptic_seg" in line)
    names = lines[at + 1].split("copypaste: ")[1].split(",")
    values = lines[at + 2].split("copypaste: ")[1].split(",")
    return dict(zip(names, map(float, values)))


def test_stage1_stage2_eval_the_lazyconfig_way(cli_toy_root, tmp_path):
    out1, out2 = tmp_path / "stage1", tmp_path / "stage2"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        LAZY1,
        *tiny_lazy_opts(out1, max_iter=3, toy_root=cli_toy_root),
        "train.amp.enabled=True",
        "train.amp.precision=bfloat16",
        "train.time_budget_minutes=60",
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (out1 / "model_final.pth").is_file()
    assert (out1 / "config.yaml").is_file()  # default_setup saved the LazyConfig
    rows = [json.loads(line) for line in open(out1 / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 2
    assert any("bbox/AP" in r for r in rows), rows[-1]  # stage 1's evaluation of the things

    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        LAZY2,
        *tiny_lazy_opts(out2, max_iter=2, toy_root=cli_toy_root),
        f"model.frozen_weights={out1 / 'model_final.pth'}",
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    final = out2 / "model_final.pth"
    assert final.is_file()
    trained = _pq(proc.stdout)

    # --eval-only of the stage-2 checkpoint: the PQ the end of training reported, and the PQ the
    # YAML tool reports on the same weights (the same model, loader and evaluators)
    lazy_eval = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        LAZY2,
        "--eval-only",
        *tiny_lazy_opts(tmp_path / "eval_lazy", toy_root=cli_toy_root),
        f"train.init_checkpoint={final}",
    )
    assert lazy_eval.returncode == 0, lazy_eval.stdout[-4000:]
    yaml_eval = run_tool(
        "train_net.py",
        "--config-file",
        STAGE2,
        "--eval-only",
        *tiny_opts(tmp_path / "eval_yaml", toy_root=cli_toy_root),
        "MODEL.WEIGHTS",
        final,
    )
    assert yaml_eval.returncode == 0, yaml_eval.stdout[-4000:]
    assert _pq(lazy_eval.stdout) == trained
    assert _pq(lazy_eval.stdout) == _pq(yaml_eval.stdout)


def test_eval_only_refuses_a_partial_checkpoint(cli_toy_root, tmp_path):
    """A stage-1 checkpoint under the stage-2 LazyConfig leaves the mask head uninitialized: an
    error naming it, as in the YAML tool."""
    out1 = tmp_path / "stage1"
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        LAZY1,
        *tiny_lazy_opts(out1, max_iter=1, toy_root=cli_toy_root),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    proc = run_tool(
        "lazyconfig_train_net.py",
        "--config-file",
        LAZY2,
        "--eval-only",
        *tiny_lazy_opts(tmp_path / "eval", toy_root=cli_toy_root),
        f"train.init_checkpoint={out1 / 'model_final.pth'}",
    )
    assert proc.returncode != 0
    assert "mask_head" in proc.stdout, proc.stdout[-4000:]
