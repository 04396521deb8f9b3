"""Helpers of the command-line tests: run tools/*.py as subprocesses on the tiny toy config.
(A uniquely named module: ``conftest`` is ambiguous between test folders.)"""

import os
import subprocess
import sys

from tiny_toy import REPO, STAGE1, STAGE2, tiny_opts  # noqa: F401  (used by the CLI tests)


def run_tool(script, *args, timeout=300):
    """Run ``tools/<script>`` with this interpreter from the repository root; returns
    CompletedProcess with stdout and stderr merged into ``.stdout``."""
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
        MPLBACKEND="Agg",
    )
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *[str(a) for a in args]],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
