"""The fast kernel of DETR's mask upsampler (``MaskHeadSmallConv``): the same function with less
work, equal up to float rounding (tested against DETR's formulation, values and gradients).

* The first convolution reads [projected image features (the same for every query of an image) |
  the query's attention maps]; by linearity it is one convolution over the image features, once per
  image, plus one over each query's M maps: the image features are never copied per query.
* Each FPN step is ``conv3x3(adapter(fpn) + nearest_2x(x))``; by linearity ``conv3x3(adapter(fpn))``
  is computed once per image, and ``conv3x3(nearest_2x(x))`` is one 4x4 transposed convolution with
  stride 2 over the coarse ``x`` (:func:`up2_conv_weight`): 16 multiply-adds per coarse pixel and
  channel pair instead of 36, and no upsampled copy of ``x``. A fine size of 2s - 1 (odd input
  sizes) is the 2s result cropped, with its last row / column recomputed exactly; other size
  ratios, and traced / exported graphs (dynamic sizes), take DETR's nearest interpolation.
* On the CPU, rows run image by image in chunks whose finest activations stay in cache.

:class:`UpsamplerWeights` are the tensors the kernel reads: the parameters themselves
(differentiable: training), or prepared once for inference (cast to the compute dtype,
channels-last on the CPU), when inputs are cast to that dtype and sums are taken in place.
"""

import torch
import torch.nn.functional as F

from .inference_opt import autocast_off, is_tracing

# Rows of the upsampler per chunk on the CPU: about this many stride-4 pixels per chunk (3 rows at
# 800x1088), so that a chunk's finest activations stay in the cache.
CHUNK_PIXELS = 3 * 200 * 272

# Nearest 2x upsampling then a 3x3 convolution (padding 1) is a 4x4 transposed convolution with
# stride 2 and padding 1: per axis, output 2i takes rows i-1, i with taps (w0, w1 + w2) and output
# 2i + 1 takes rows i, i+1 with taps (w0 + w1, w2); as transposed-convolution kernel rows:
# (w2, w1 + w2, w0 + w1, w0).
_UP2_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def up2_conv_weight(weight):
    """(Cout, Cin, 3, 3) → (Cin, Cout, 4, 4) with ``conv_transpose2d(x, ., stride=2, padding=1) ==
    conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)``."""
    taps = torch.tensor(_UP2_TAPS, dtype=weight.dtype, device=weight.device)
    return torch.einsum("ky,lx,oiyx->iokl", taps, taps, weight)


def up_mode(coarse, fine):
    """How an FPN step maps a coarse (h, w) onto a fine (H, W): "up2" (each H in 2h, 2h - 1 and each
    W likewise: the transposed convolution), "same" (no upsampling) or "interpolate" (DETR's
    formulation)."""
    if tuple(coarse) == tuple(fine):
        return "same"
    if all(f == 2 * c or (f == 2 * c - 1 and c >= 2) for c, f in zip(coarse, fine)):
        return "up2"
    return "interpolate"


def up2_conv(x, weight, weight_t, size):
    """``conv2d(interpolate(x, size, mode="nearest"), weight, padding=1)`` (no bias) for a size of
    2h or 2h - 1 per axis: the transposed convolution, cropped; an odd size's last row / column
    (which reads the zero padding past the crop) recomputed on a two-row strip."""
    h, w = x.shape[-2:]
    out = F.conv_transpose2d(x, weight_t, stride=2, padding=1)
    if tuple(size) == (2 * h, 2 * w):
        return out
    out = out[..., : size[0], : size[1]].contiguous(memory_format=_memory_format(x))
    if size[0] == 2 * h - 1:  # the last two upsampled rows come from x's last two rows
        strip = F.interpolate(x[..., h - 2 :, :], size=(2, size[1]), mode="nearest")
        out[..., -1:, :] = F.conv2d(F.pad(strip, (0, 0, 0, 1)), weight, padding=(0, 1))
    if size[1] == 2 * w - 1:
        strip = F.interpolate(x[..., :, w - 2 :], size=(size[0], 2), mode="nearest")
        out[..., :, -1:] = F.conv2d(F.pad(strip, (0, 1, 0, 0)), weight, padding=(1, 0))
    return out


def _memory_format(x):
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


class UpsamplerWeights:
    """The tensors the kernel reads from a ``MaskHeadSmallConv``: lay1 split into its image-feature
    (the first ``split_at``) and attention-map input channels, the FPN convolutions also as
    2x-upsampling transposed convolutions, out_lay in float32.

    ``dtype`` None: from the parameters themselves (differentiable; autocast casts them).
    Otherwise prepared for inference (``prepared`` True): cast to ``dtype``, 4-D weights
    channels-last on the CPU, GroupNorm affine weights cast too off the CPU (the CPU GroupNorm
    takes bf16 input with float32 weights).
    """

    def __init__(self, head, split_at, dtype=None):
        self.prepared = dtype is not None
        self.dtype = dtype
        device = head.lay1.weight.device
        cast_norms = self.prepared and device.type != "cpu"

        def cast(t):
            if t is None or not self.prepared:
                return t
            t = t.detach().to(dtype)
            if t.dim() == 4 and t.device.type == "cpu":
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        def norm(gn):
            affine = (cast(gn.weight), cast(gn.bias)) if cast_norms else (gn.weight, gn.bias)
            return (gn.num_groups, *affine, gn.eps)

        w1 = head.lay1.weight
        self.lay1_src = cast(w1[:, :split_at])
        self.lay1_maps = cast(w1[:, split_at:])
        self.lay1_bias = cast(head.lay1.bias)
        self.gn1, self.gn2 = norm(head.gn1), norm(head.gn2)
        self.lay2 = (cast(head.lay2.weight), cast(head.lay2.bias))
        self.blocks = [
            {
                "adapter": (cast(adapter.weight), cast(adapter.bias)),
                "weight": cast(lay.weight),
                "weight_t": cast(up2_conv_weight(lay.weight)),
                "bias": cast(lay.bias),
                "norm": norm(gn),
            }
            for adapter, lay, gn in head.fpn_steps()
        ]
        out = head.out_lay
        self.out = (out.weight.float(), out.bias.float())
        if self.prepared:
            self.out = tuple(t.detach() for t in self.out)


def split_upsample(w, src, maps, fpns, batch_idx, image_runs=None):
    """Mask logits (K, 1, H_3, W_3) float32 of ``MaskHeadSmallConv`` for rows whose input is
    ``cat([src[batch_idx], maps], 1)``, without that concatenation.

    w: :class:`UpsamplerWeights`; src: (B, C, h, w) image features; maps: (K, M, h, w) each row's
    attention maps; fpns: coarse-to-fine (B, C_i, H_i, W_i) backbone features; batch_idx: (K,) the
    image of each row; image_runs: the (start, end, image) runs of batch_idx when the caller knows
    them on the host (else the CPU path reads batch_idx)."""
    tracing = is_tracing()
    cpu = src.device.type == "cpu" and not tracing
    fmt = torch.channels_last if cpu else torch.contiguous_format
    shared, steps = _image_terms(w, src, fpns, tracing, fmt)
    n = maps.shape[0]
    if not cpu or n == 0:
        return _rows(w, maps, shared, steps, batch_idx, slice(0, n), None, fmt)
    # CPU: the rows of one image at a time, in chunks whose finest activations stay in cache
    finest = steps[-1][1].shape[-2] * steps[-1][1].shape[-1]
    chunk = max(1, CHUNK_PIXELS // max(1, finest))
    runs = _image_runs(batch_idx) if image_runs is None else image_runs
    out = [
        _rows(w, maps, shared, steps, batch_idx, slice(lo, min(lo + chunk, end)), image, fmt)
        for start, end, image in runs
        for lo in range(start, end, chunk)
    ]
    return out[0] if len(out) == 1 else torch.cat(out)


def _prepare_input(w, t, fmt):
    """Inference: ``t`` in the compute dtype and memory format; training: as it is."""
    return t.to(dtype=w.dtype, memory_format=fmt) if w.prepared else t


def _add(w, x, y):
    """x + y, in place at inference."""
    return x.add_(y) if w.prepared else x + y


def _image_terms(w, src, fpns, tracing, fmt):
    """The per-image parts: lay1 over the image features, and per FPN step (mode, the adapter's
    output — with the step's convolution applied for "up2" — and the step's weights)."""
    shared = F.conv2d(_prepare_input(w, src, fmt), w.lay1_src, w.lay1_bias, padding=1)
    coarse = tuple(src.shape[-2:])
    steps = []
    for fpn, block in zip(fpns, w.blocks):
        cur = F.conv2d(_prepare_input(w, fpn, fmt), *block["adapter"])
        fine = tuple(cur.shape[-2:])
        mode = "interpolate" if tracing else up_mode(coarse, fine)
        if mode == "up2":
            # conv(adapter + up(x)) = conv(adapter) + conv(up(x)): the first part once per image
            cur = F.conv2d(cur, block["weight"], block["bias"], padding=1)
        steps.append((mode, cur, block))
        coarse = fine
    return shared, steps


def _per_row(t, batch_idx, rows, image):
    """A per-image tensor for the rows ``rows``: broadcast (one image), or gathered."""
    if t.shape[0] == 1:
        return t
    if image is not None:
        return t[image : image + 1]
    return t[batch_idx[rows]]


def _rows(w, maps, shared, steps, batch_idx, rows, image, fmt):
    """Mask logits of the rows ``rows`` (a slice); image: their one image, or None."""
    x = F.conv2d(_prepare_input(w, maps[rows], fmt), w.lay1_maps, None, padding=1)
    x = _add(w, x, _per_row(shared, batch_idx, rows, image))
    x = F.relu_(F.group_norm(x, *w.gn1))
    x = F.relu_(F.group_norm(F.conv2d(x, *w.lay2, padding=1), *w.gn2))
    for mode, cur, block in steps:
        if mode == "up2":
            x = up2_conv(x, block["weight"], block["weight_t"], cur.shape[-2:])
            x = _add(w, x, _per_row(cur, batch_idx, rows, image))
        else:
            if mode == "interpolate":
                x = F.interpolate(x, size=cur.shape[-2:], mode="nearest")
            x = F.conv2d(
                _per_row(cur, batch_idx, rows, image) + x, block["weight"], block["bias"], padding=1
            )
        x = F.relu_(F.group_norm(x, *block["norm"]))
    with autocast_off(x.device.type):  # float32 mask logits under autocast too
        return F.conv2d(x.float(), *w.out, padding=1)


def _image_runs(batch_idx):
    """(start, end, image) of each run of equal consecutive values of batch_idx (a host sync)."""
    values = batch_idx.tolist()
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            runs.append((start, i, values[start]))
            start = i
    return runs
