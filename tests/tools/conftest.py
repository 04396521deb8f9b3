"""Fixtures of the command-line tests (helpers in _cli.py)."""

import pytest
from _cli import ENGINE


@pytest.fixture(scope="session")
def cli_toy_root(tmp_path_factory):
    """A toy set generated once with the tiny config's arguments, so the tools find it cached."""
    from detr_panoptic_d2.data.toy_dataset import generate_toy_panoptic

    root = tmp_path_factory.mktemp("cli_toy")
    generate_toy_panoptic(root, ENGINE.TOY_NUM_TRAIN, ENGINE.TOY_NUM_VAL, ENGINE.TOY_IMAGE_SIZE)
    return str(root)
