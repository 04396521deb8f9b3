"""Fixtures of the command-line tests (helpers in _cli.py)."""

import pytest
from tiny_toy import generate_tiny_toy


@pytest.fixture(scope="session")
def cli_toy_root(tmp_path_factory):
    """A toy set generated once with the tiny config's arguments, so the tools find it cached."""
    return generate_tiny_toy(tmp_path_factory.mktemp("cli_toy"))
