"""Fixtures of the engine tests: the toy configs made tiny and CPU-cheap.

Fixtures: ``toy_root`` (one small generated toy set per session), ``clean_toy`` (that root, with the
toy split names registered afresh for it) and ``tiny`` (a builder of tiny configs on that root).
The helpers are in tests/tiny_toy.py, which other test folders and spawned workers import.
"""

import pytest
from tiny_toy import generate_tiny_toy, tiny_cfg, unregister_toy


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """One small generated toy data set shared by the session."""
    return generate_tiny_toy(tmp_path_factory.mktemp("toy_shared"))


@pytest.fixture
def clean_toy(toy_root):
    """The shared toy root, with the toy names free to be registered for it (and forgotten
    afterwards)."""
    unregister_toy()
    yield toy_root
    unregister_toy()


@pytest.fixture
def tiny(clean_toy):
    """``tiny(out_dir, stage=1, max_iter=2, extra=(), freeze=True)`` → a tiny config on the shared
    toy set."""

    def build(out_dir, stage=1, max_iter=2, extra=(), freeze=True):
        return tiny_cfg(
            out_dir, stage=stage, max_iter=max_iter, extra=extra, toy_root=clean_toy, freeze=freeze
        )

    return build
