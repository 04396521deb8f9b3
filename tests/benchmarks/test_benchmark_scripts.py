"""The benchmark scripts run and print their tables (tiny sizes; the figures themselves are not
asserted)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script, *args):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_postprocess_benchmark_prints_one_row_per_kept_count():
    out = _run("bench_postprocess.py", "--size", "64", "96", "--kept", "2", "5", "--threads", "1")
    rows = [line for line in out.splitlines() if line.strip().split("|")[0].strip() in ("2", "5")]
    assert len(rows) == 2
    assert all(float(r.split("|")[-1]) >= 0 for r in rows)


@pytest.mark.slow
def test_inference_benchmark_runs_on_a_small_input():
    out = _run(
        "bench_inference.py",
        *("--sizes", "96x128", "--kept", "3", "--repeat", "1", "--threads", "1"),
        *("--precision", "fp32", "bf16"),
    )
    assert "measured peak (GFLOP/s" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("96x128")]
    assert [r.split("|")[1].strip() for r in rows] == ["fp32", "bf16"]
    for row in rows:
        latency, images_per_s, mem, gflop = (float(x) for x in row.split("|")[2:6])
        assert latency > 0 and images_per_s > 0 and mem > 0 and gflop > 0
    assert 0.0 <= float(rows[1].split("|")[-1]) <= 1.0  # bf16's agreement with fp32
