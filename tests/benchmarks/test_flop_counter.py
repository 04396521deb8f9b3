"""benchmarks/common.FlopCounter: the FLOPs of convolutions and matmuls, in every autograd mode."""

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

_COMMON = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "common.py")
_spec = importlib.util.spec_from_file_location("benchmarks_common", _COMMON)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
def test_conv_and_matmul_flops_in_every_mode(mode):
    x = torch.randn(1, 8, 10, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3)
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    ctx = {
        "grad": torch.enable_grad,
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }[mode]

    def run():
        with ctx():
            F.conv2d(x, w, padding=1)
            a @ b

    # 2 per multiply-add: conv 16 x 8 x 3 x 3 per output pixel (10 x 12), matmul 5 x 7 x 3
    assert common.count_flops(run) == 2 * 16 * 8 * 9 * 10 * 12 + 2 * 5 * 7 * 3
