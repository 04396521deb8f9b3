"""tools/plot_metrics.py: the rows it plots from Detectron2's appended metrics.json, and the PNG it
writes."""

import importlib.util
import json
import os

import pytest
from _cli import REPO, run_tool


def _read_metrics():
    spec = importlib.util.spec_from_file_location(
        "plot_metrics", os.path.join(REPO, "tools", "plot_metrics.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_metrics


def _write(path, runs):
    with open(path, "w") as f:
        for run, iterations in runs:
            for it in iterations:
                f.write(json.dumps({"iteration": it, "total_loss": run + it / 1000}) + "\n")
            f.write(
                json.dumps({"iteration": iterations[-1], "panoptic_seg/PQ": 50.0}) + "\n"
            )  # eval row


def test_rerun_in_the_same_folder_keeps_the_last_run(tmp_path):
    path = tmp_path / "metrics.json"
    _write(path, [(1, [19, 39, 59]), (2, [19, 39])])
    rows = _read_metrics()(path)
    assert [(r["iteration"], int(r["total_loss"])) for r in rows] == [(19, 2), (39, 2)]


def test_resume_replaces_the_rows_from_its_iteration_on(tmp_path):
    path = tmp_path / "metrics.json"
    _write(path, [(1, [19, 39, 59]), (2, [39, 59, 79])])
    rows = _read_metrics()(path)
    assert [(r["iteration"], int(r["total_loss"])) for r in rows] == [
        (19, 1),
        (39, 2),
        (59, 2),
        (79, 2),
    ]


def test_corrupt_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 19, "total_loss": 1.0}\n{"iteration": 39, "total_l\n')
    with pytest.raises(ValueError, match=r"metrics.json, line 2"):
        _read_metrics()(path)


def test_cli_writes_one_png(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _write(a, [(1, [19, 39, 59])])
    _write(b, [(1, [19, 39])])
    out = tmp_path / "loss.png"
    proc = run_tool("plot_metrics.py", a, b, "-o", out)
    assert proc.returncode == 0, proc.stdout
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
