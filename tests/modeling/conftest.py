"""Fixtures of the modeling tests; the tiny-config builder and input helpers live in
detr_test_utils."""

import pytest
from detr_test_utils import (  # noqa: F401  (re-exported helpers, the thread fixture)
    build_tiny_model,
    make_input,
    single_thread,
    tiny_cfg,
)


@pytest.fixture
def tiny_model():
    return build_tiny_model()


@pytest.fixture
def tiny_mask_model():
    return build_tiny_model(mask_head=True)
