"""The pieces of the inference fast paths: BatchNorm folded into the convolutions (channels-last,
in the compute dtype), the precisions of ``MODEL.DETR.TEST.PRECISION``, and the contexts that
keep parts of the model in float32.

* :class:`FoldedResNet`: a Detectron2 ResNet with each (Frozen)BatchNorm folded into the weights and
  bias of the convolution before it (``w' = w * s``, ``b' = beta + (b - mean) * s``, ``s = gamma /
  sqrt(var + eps)``, computed in float64), channels-last, in the compute dtype. Built from the
  module's weights when it is made and never updated: :class:`.inference_plan.InferencePlan` makes
  one, and the model drops the plan when its weights may change.

Nothing here touches a module's parameters, buffers or ``state_dict``.
"""

import contextlib
import logging

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_tracing():
    """True while ``torch.jit.trace`` / ONNX export records the model (no host-side shape logic)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def autocast_off(device_type):
    """A context in which ``device_type``'s autocast is off, for the parts that stay float32 under
    mixed-precision training (``SOLVER.AMP``): the class and box heads, the mask head's attention
    maps and final mask logits, the matcher and the losses. A no-op when autocast is not on
    (float32 training, inference, export)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# ---- BatchNorm folding ---------------------------------------------------------------------------
def foldable_norm(norm):
    """True for the norms that are an affine map per channel at inference: FrozenBatchNorm2d, and
    BatchNorm in eval mode with running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and not norm.training
        and norm.running_mean is not None
    )


def fold_conv_norm(conv, dtype=torch.float32, memory_format=torch.channels_last):
    """(weight, bias) of ``conv`` (a Detectron2 ``Conv2d``) with its foldable ``norm`` folded in,
    computed in float64 (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and returned in ``dtype``
    (weight in ``memory_format``). Without a norm: the conv's own."""

    def f64(t):
        return None if t is None else t.detach().double()

    w, b = f64(conv.weight), f64(conv.bias)
    norm = getattr(conv, "norm", None)
    if norm is not None:
        if not foldable_norm(norm):
            raise ValueError(f"cannot fold {type(norm).__name__} into a convolution")
        w, b = fuse_conv_bn_weights(
            w,
            b,
            f64(norm.running_mean),
            f64(norm.running_var),
            norm.eps,
            f64(norm.weight),
            f64(norm.bias),
        )
    if b is None:
        b = torch.zeros_like(w[:, 0, 0, 0])
    w = w.detach().to(dtype)
    b = b.detach()
    if w.dim() == 4:
        w = w.contiguous(memory_format=memory_format)
    return w, b.to(dtype)


class _FoldedConv:
    """A Detectron2 ``Conv2d`` (+ norm + activation) with the norm folded in (or kept as a module
    when it cannot be folded, e.g. GroupNorm)."""

    __slots__ = ("weight", "bias", "stride", "padding", "dilation", "groups", "norm", "activation")

    def __init__(self, conv, dtype, memory_format):
        norm = getattr(conv, "norm", None)
        fold = norm is not None and foldable_norm(norm)
        if fold or norm is None:
            self.weight, self.bias = fold_conv_norm(conv, dtype, memory_format)
            self.norm = None
        else:
            self.weight = conv.weight.detach().to(dtype).contiguous(memory_format=memory_format)
            self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)
            self.norm = norm
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups = conv.groups
        self.activation = getattr(conv, "activation", None)

    def __call__(self, x):
        x = F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class _FoldedBlock:
    """BasicBlock / BottleneckBlock (conv1, conv2[, conv3], optional shortcut), as in Detectron2."""

    __slots__ = ("convs", "shortcut")

    def __init__(self, block, dtype, memory_format):
        names = ("conv1", "conv2", "conv3") if hasattr(block, "conv3") else ("conv1", "conv2")
        self.convs = [_FoldedConv(getattr(block, n), dtype, memory_format) for n in names]
        sc = block.shortcut
        self.shortcut = None if sc is None else _FoldedConv(sc, dtype, memory_format)

    def __call__(self, x):
        out = x
        for conv in self.convs[:-1]:
            out = F.relu_(conv(out))
        out = self.convs[-1](out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class FoldedResNet:
    """Inference copy of a Detectron2 ``ResNet`` (BasicStem; BasicBlock / BottleneckBlock stages):
    the same features, each BatchNorm folded into its convolution, channels-last, in ``dtype``.

    ``FoldedResNet.supports(resnet)`` tells whether the structure is one this class reproduces."""

    def __init__(self, resnet, dtype=torch.float32, memory_format=torch.channels_last):
        self.dtype, self.memory_format = dtype, memory_format
        self.stem = _FoldedConv(resnet.stem.conv1, dtype, memory_format)
        self.stages = [
            (name, [_FoldedBlock(b, dtype, memory_format) for b in stage])
            for name, stage in zip(resnet.stage_names, resnet.stages)
        ]
        self.out_features = list(resnet._out_features)

    @staticmethod
    def supports(resnet):
        from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

        if type(resnet.stem) is not BasicStem or getattr(resnet, "num_classes", None) is not None:
            return False
        if "stem" in resnet._out_features:
            return False
        return all(
            type(b) in (BasicBlock, BottleneckBlock) for stage in resnet.stages for b in stage
        )

    def __call__(self, x):
        x = x.to(dtype=self.dtype, memory_format=self.memory_format)
        x = F.max_pool2d(F.relu_(self.stem(x)), kernel_size=3, stride=2, padding=1)
        outputs = {}
        for name, blocks in self.stages:
            for block in blocks:
                x = block(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs


# ---- precision -----------------------------------------------------------------------------------
def precision_dtype(precision):
    """``MODEL.DETR.TEST.PRECISION`` ("fp32", "bf16", "fp16") → torch dtype (any device)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"MODEL.DETR.TEST.PRECISION must be one of {sorted(PRECISIONS)}, got {precision!r}"
        )
    return PRECISIONS[precision]


def bf16_is_fast(device_type="cpu"):
    """Whether ``device_type`` computes bf16 natively: a CPU with AVX512-BF16 dot products or AMX
    tiles (what oneDNN's bf16 kernels use; other AVX-512 CPUs convert through float32), or a CUDA
    GPU with bf16 arithmetic (compute capability 8.0 and above)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False
