"""benchmarks/bench_large_image.py runs on the toy model with a small photo and prints its row (the
figures themselves are not asserted, beyond being measured)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_large_image_benchmark_runs_on_the_toy_model():
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "bench_large_image.py"),
            *("--size", "200x300", "--kept", "5", "--threads", "1"),
            *("--config", os.path.join(ROOT, "configs", "toy", "detr_R18_toy_stage2.yaml")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("bool |")]
    assert len(rows) == 1, proc.stdout
    processed, instances, above, masks, model = (c.strip() for c in rows[0].split("|")[1:6])
    assert processed == "112x168"  # the toy test resize of a 200 x 300 photo
    assert int(instances) == 16  # every query of the toy model (no thing/stuff split registered)
    assert float(above) >= 0 and float(model) > 0
