"""The few array operations the post-processing needs, for torch tensors and for numpy arrays.

The merge functions of :mod:`detr_panoptic_runtime.postprocess` are written once: ordinary indexing,
comparisons and ``& | ~`` work alike on both kinds of array, and everything else goes through the
object that :func:`ops_for` returns for the array at hand. ``TorchOps`` keeps the fast torch forms
(``max(0)`` rather than ``argmax(0)``, a uint8 row count, in-place products) so the eager model
loses nothing; ``NumpyOps`` gives the same results on numpy (ONNX Runtime, no torch installed).

The operations, with their meaning (both backends return the first index on ties):

- ``arange(n, like)``: int64 0..n-1 on ``like``'s device
- ``full(shape, v, dtype, like)``: filled with ``v`` (dtype "bool", "int32", "int64", "float32")
- ``new_zeros(x, shape)``: zeros of ``x``'s dtype and device
- ``asarray(x, dtype, like)``: ``x`` (list or array of either kind) as this backend's array
- ``astype(x, dtype)``: conversion
- ``where(c, a, b)``: elementwise choice (``b`` may be a Python scalar)
- ``argmax0(x)``: index of the maximum along axis 0
- ``argmax_rows(b)``: index of the first True of each row of a bool matrix
- ``bincount(x, n)``: counts of non-negative ints, at least ``n`` bins
- ``clamp_min(x, v)``: elementwise max(x, v)
- ``ravel(x)``: 1-D view (copy if needed)
- ``softmax(x)``, ``max_last(x)``: softmax, (values, indices) of the maximum, over the last axis
- ``sigmoid(x)``: logistic function (float32)
- ``count_rows(b)``: number of True per row of a bool matrix, int32
- ``pick_rows(b, idx)``: ``b[idx[j], j]`` for every column j
- ``nonzero(x)``: int64 indices of the True entries of a 1-D bool array
- ``bilinear(x, size, rows, cols)``: (Q, h, w) → the (Q, rows, cols) top-left crop of the (Q, *size)
  bilinear upsampling, half-pixel centers (``F.interpolate(..., "bilinear", align_corners=False)``)
- ``argmax_bilinear(x, size, rows, cols, row_need=None)`` (torch only): ``argmax0`` of that
  upsampling; rows where ``row_need`` (rows,) is False may hold any valid index. On the CPU it is
  computed in row slabs that stay in cache, never holding the whole upsampling (bit-identical).
- ``tolist(x)``: Python list
"""

import sys

import numpy as np

__all__ = ["ops_for", "TorchOps", "NumpyOps", "is_torch"]


def is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class NumpyOps:
    name = "numpy"

    @staticmethod
    def arange(n, like=None):
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def full(shape, value, dtype, like=None):
        return np.full(tuple(shape), value, dtype=np.dtype(dtype))

    @staticmethod
    def new_zeros(x, shape):
        return np.zeros(tuple(shape), dtype=x.dtype)

    @staticmethod
    def asarray(x, dtype=None, like=None):
        if is_torch(x):
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=None if dtype is None else np.dtype(dtype))

    @staticmethod
    def astype(x, dtype):
        return x.astype(np.dtype(dtype), copy=False)

    @staticmethod
    def where(cond, a, b):
        return np.where(cond, a, b)

    @staticmethod
    def argmax0(x):
        return x.argmax(0)

    @staticmethod
    def argmax_rows(b):
        return b.argmax(1)

    @staticmethod
    def bincount(x, n):
        return np.bincount(x, minlength=n)

    @staticmethod
    def clamp_min(x, v):
        return np.maximum(x, v)

    @staticmethod
    def ravel(x):
        return x.ravel()

    @staticmethod
    def softmax(x):
        x = np.asarray(x, dtype=np.float32)
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    @staticmethod
    def max_last(x):
        idx = x.argmax(-1)
        return np.take_along_axis(x, idx[..., None], -1)[..., 0], idx

    @staticmethod
    def sigmoid(x):
        with np.errstate(over="ignore"):
            return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32, copy=False)

    @staticmethod
    def count_rows(b):
        return np.count_nonzero(b, axis=1).astype(np.int32)

    @staticmethod
    def pick_rows(b, idx):
        return b[idx, np.arange(b.shape[1])]

    @staticmethod
    def nonzero(x):
        return np.flatnonzero(x).astype(np.int64)

    @staticmethod
    def bilinear(x, size, rows, cols):
        return _numpy_bilinear(x, size, rows, cols)

    @staticmethod
    def tolist(x):
        return x.tolist()


def _linear_taps(n_in, n_out, n_keep):
    """Source indices and weights of the first ``n_keep`` of ``n_out`` outputs, as PyTorch's CPU
    kernel computes them in float32 (area_pixel_compute_source_index with align_corners=False, then
    guard_index_and_lambda)."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_keep, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, np.float32(1) - lam, lam


def _numpy_bilinear(x, size, rows, cols):
    """(Q, h, w) float32 → (Q, rows, cols): the top-left crop of the (Q, *size) bilinear upsampling,
    with PyTorch's index and weight arithmetic (interpolate along the width, then the height)."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    r0, r1, rw0, rw1 = _linear_taps(h, size[0], rows)
    c0, c1, cw0, cw1 = _linear_taps(w, size[1], cols)
    # only the source rows that some output row reads
    used = np.unique(np.concatenate([r0, r1]))
    pos = np.zeros(h, dtype=np.int64)
    pos[used] = np.arange(len(used))
    xs = x[:, used]
    t = xs[:, :, c0] * cw0 + xs[:, :, c1] * cw1  # (Q, len(used), cols)
    return t[:, pos[r0]] * rw0[:, None] + t[:, pos[r1]] * rw1[:, None]


class TorchOps:
    name = "torch"

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        self._dtypes = {
            "bool": torch.bool,
            "int32": torch.int32,
            "int64": torch.int64,
            "float32": torch.float32,
            "float64": torch.float64,
        }

    def arange(self, n, like=None):
        return self.torch.arange(n, device=None if like is None else like.device)

    def full(self, shape, value, dtype, like=None):
        device = None if like is None else like.device
        return self.torch.full(tuple(shape), value, dtype=self._dtypes[dtype], device=device)

    @staticmethod
    def new_zeros(x, shape):
        return x.new_zeros(tuple(shape))

    def asarray(self, x, dtype=None, like=None):
        device = None if like is None else like.device
        dt = None if dtype is None else self._dtypes[dtype]
        if isinstance(x, self.torch.Tensor):
            return x.to(device=device, dtype=dt)
        return self.torch.as_tensor(np.asarray(x), dtype=dt, device=device)

    def astype(self, x, dtype):
        return x.to(self._dtypes[dtype])

    def where(self, cond, a, b):
        return self.torch.where(cond, a, b)

    @staticmethod
    def argmax0(x):
        return x.max(0).indices  # ~2x faster than argmax(0) on CPU; first index on ties

    @staticmethod
    def argmax_rows(b):
        return b.int().argmax(1)

    def bincount(self, x, n):
        return self.torch.bincount(x, minlength=n)

    @staticmethod
    def clamp_min(x, v):
        return x.clamp(min=v)

    @staticmethod
    def ravel(x):
        return x.flatten()

    @staticmethod
    def softmax(x):
        return x.softmax(-1)

    @staticmethod
    def max_last(x):
        return x.max(-1)

    @staticmethod
    def sigmoid(x):
        return x.sigmoid()

    def count_rows(self, b):
        # not via int64: half the memory traffic
        return b.view(self.torch.uint8).sum(1, dtype=self.torch.int32)

    @staticmethod
    def pick_rows(b, idx):
        return b.gather(0, idx[None])[0]

    @staticmethod
    def nonzero(x):
        return x.nonzero()[:, 0]

    def bilinear(self, x, size, rows, cols):
        out = self.F.interpolate(x[:, None], size=tuple(size), mode="bilinear", align_corners=False)
        return out[:, 0, :rows, :cols]

    def argmax_bilinear(self, x, size, rows, cols, row_need=None):
        q, h, w = x.shape
        if tuple(size) != (4 * h, 4 * w) or w < SLAB_MIN_WIDTH or x.device.type != "cpu":
            return self.argmax0(self.bilinear(x, size, rows, cols))
        # Output rows 4m+2 .. 4m+5 read input rows m and m+1 (half-pixel centers, scale 1/4), so
        # input rows lo .. lo+k give output rows 4lo+2 .. 4(lo+k)+1 exactly as the whole upsampling
        # does (and from 0 / to the end at the canvas' edges, which both clamp alike).
        k = max(1, SLAB_BYTES // (16 * q * w * x.element_size()))  # input rows per slab
        out = self.torch.zeros((rows, cols), dtype=self.torch.int64, device=x.device)
        lo, start = 0, 0
        while start < rows:
            hi = min(lo + k + 1, h)
            end = min(4 * h if hi == h else 4 * (lo + k) + 2, rows)
            if row_need is None or bool(row_need[start:end].any()):
                up = self.F.interpolate(
                    x[:, None, lo:hi],
                    size=(4 * (hi - lo), 4 * w),
                    mode="bilinear",
                    align_corners=False,
                )
                out[start:end] = self.argmax0(up[:, 0, start - 4 * lo : end - 4 * lo, :cols])
            lo, start = lo + k, end
        return out

    @staticmethod
    def tolist(x):
        return x.tolist()


# argmax_bilinear's row slabs: about this many bytes of upsampled masks each (cache-sized); below
# this mask width torch's bilinear kernel may round a slab differently from the whole, so it is
# computed whole.
SLAB_BYTES = 4 << 20
SLAB_MIN_WIDTH = 32

_TORCH_OPS = None


def ops_for(x):
    """The operations object for ``x``'s kind of array: ``TorchOps`` for a torch tensor, else
    ``NumpyOps``."""
    global _TORCH_OPS
    if is_torch(x):
        if _TORCH_OPS is None:
            _TORCH_OPS = TorchOps()
        return _TORCH_OPS
    return NumpyOps
