"""The documentation's code runs: the Python blocks of docs/python_api.md, docs/lazyconfig.md and
the README's Python API (an official download stood in for by a checkpoint in the official
layout), and docs/lazyconfig.md's toy commands as written (with the tiny test sizes appended)."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from tiny_toy import REPO, generate_tiny_toy, tiny_lazy_opts

pytestmark = pytest.mark.slow


def _blocks(page, lang):
    with open(os.path.join(REPO, page)) as f:
        return re.findall(rf"```{lang}\n(.*?)```", f.read(), flags=re.S)


def _commands(block):
    """The shell commands of a bash block (continuation lines joined, comments dropped)."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and line[0] != "#"]


@pytest.fixture
def official_download(tmp_path, monkeypatch):
    """Every official DETR URL 'downloads' a checkpoint in the official layout (random values)."""
    from official_layout import write_official_checkpoint

    from detr_panoptic_d2.checkpoint import official

    path = str(tmp_path / "detr-r50-panoptic.pth")
    write_official_checkpoint(path, distinct_queries=True)

    class Download:
        def _get_local_path(self, url, **kwargs):
            return path

    monkeypatch.setattr(official.HANDLER, "_http", Download())
    monkeypatch.chdir(REPO)  # the pages' paths are relative to the checkout
    return path


def test_python_api_page_runs(official_download):
    namespace = {}
    blocks = _blocks("docs/python_api.md", "python")
    assert len(blocks) == 3
    for block in blocks:  # one session, as a reader runs them in order
        exec(compile(block, "docs/python_api.md", "exec"), namespace)
    assert namespace["cfg"].MODEL.WEIGHTS.startswith("https://dl.fbaipublicfiles.com/detr/")


def test_readme_python_block_runs(official_download):
    (block,) = _blocks("README.md", "python")
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["model"].mask_head is not None


def test_lazyconfig_page_python_runs(official_download):
    (block,) = _blocks("docs/lazyconfig.md", "python")
    exec(compile(block, "docs/lazyconfig.md", "exec"), {})


def test_lazyconfig_page_commands(tmp_path):
    """The toy block's three commands, run as written from a fresh folder (their output paths are
    relative), with the tiny test sizes appended; the COCO block's overrides and files exist."""
    from detectron2.config import LazyConfig

    toy_block, coco_block = _blocks("docs/lazyconfig.md", "bash")
    toy = generate_tiny_toy(tmp_path / "toy")
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    commands = _commands(toy_block)
    assert len(commands) == 3
    for argv in commands:
        assert argv[:2] == ["python", "tools/lazyconfig_train_net.py"], argv
        at = argv.index("--config-file") + 1
        argv[at] = os.path.join(REPO, argv[at])
        tiny = [
            o for o in tiny_lazy_opts(tmp_path, max_iter=2, toy_root=toy)
            if not o.startswith("train.output_dir=")
        ]  # fmt: skip
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, argv[1]), *argv[2:], *tiny],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (argv, proc.stdout[-4000:])
    assert (tmp_path / "output/lazy_toy/stage2/model_final.pth").is_file()
    assert "PQ" in proc.stdout  # the --eval-only run printed the panoptic table

    for argv in _commands(coco_block):
        at = argv.index("--config-file") + 1
        overrides = [a for a in argv[at + 1 :] if "=" in a and not a.startswith("-")]
        cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(REPO, argv[at])), overrides)
        assert cfg.train.output_dir or cfg.train.init_checkpoint
