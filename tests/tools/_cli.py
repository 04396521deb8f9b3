"""Helpers of the command-line tests: run tools/*.py as subprocesses on the tiny toy config.
(A uniquely named module: ``conftest`` is ambiguous between test folders.)"""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _engine_conftest():
    path = os.path.join(REPO, "tests", "engine", "conftest.py")
    spec = importlib.util.spec_from_file_location("_engine_conftest_for_tools", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENGINE = _engine_conftest()
STAGE1, STAGE2, tiny_opts = ENGINE.STAGE1, ENGINE.STAGE2, ENGINE.tiny_opts


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
