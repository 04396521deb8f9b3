"""Fixtures of the modeling tests; the tiny-config builder and input helpers live in
detr_test_utils."""

import pytest
import torch
from detr_test_utils import build_tiny_model, make_input, tiny_cfg  # noqa: F401  (re-exported helpers)


@pytest.fixture
def tiny_model():
    return build_tiny_model()


@pytest.fixture
def tiny_mask_model():
    return build_tiny_model(mask_head=True)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run faster on one thread, and much faster when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
