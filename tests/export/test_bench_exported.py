"""benchmarks/bench_exported.py runs and prints its table (tiny size; the figures are not
asserted)."""

import os
import subprocess
import sys

import pytest
from tiny_toy import REPO


@pytest.mark.slow
def test_bench_exported_prints_a_row_per_size():
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "bench_exported.py")]
        + ["--sizes", "96x128", "--kept", "3", "--repeat", "1", "--threads", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.strip().startswith("96x128")]
    assert len(rows) == 1 and rows[0].count("|") == 4 and "(1.00)" in rows[0]
