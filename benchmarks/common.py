"""Shared pieces of the benchmarks: model construction, controlled number of kept queries, timing,
memory, FLOP counting and the machine's measured peak (GFLOP/s)."""

import os
import platform
import resource
import statistics

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import detr_panoptic_d2  # noqa: F401  (registers the plugin)
from detr_panoptic_d2 import add_detr_panoptic_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CONFIG = os.path.join(ROOT, "configs", "COCO-PanopticSegmentation", "detr_R_50_stage2.yaml")


def build_cfg(config_file=COCO_CONFIG, opts=(), device="cpu"):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    return cfg


def build_eval_model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def force_kept_queries(class_embed, num_kept, class_id=0):
    """Forward hook on a class head: the first ``num_kept`` queries predict ``class_id`` with
    probability ~1, the others no-object, so that exactly ``num_kept`` queries pass the panoptic
    threshold (random weights would keep none). Works on any module whose output is (..., N, K+1)
    logits."""

    def hook(module, inputs, output):
        out = torch.full_like(output, -10.0)
        out[..., num_kept:, -1] = 10.0
        out[..., :num_kept, class_id] = 10.0
        # keep a dependence on the real output so that nothing upstream is optimized away
        return out + 0.0 * output

    return class_embed.register_forward_hook(hook)


def timed(fn, warmup=2, repeat=5):
    """Median and all wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs,
    each run timed by ``torch.utils.benchmark.Timer`` (which synchronizes CUDA)."""
    for _ in range(warmup):
        fn()
    # the Timer runs at one thread unless told: the threads this process was set to
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = [timer.timeit(number=1).median for _ in range(repeat)]
    return statistics.median(times), times


def peak_rss_gb():
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def cpu_name():
    """CPU model name and its bf16-relevant instruction sets (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == platform.machine():
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX-512'})"


def machine_line(device="cpu"):
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}"
    return (
        f"device: CPU {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads | "
        f"torch {torch.__version__}"
    )


class FlopCounter(TorchDispatchMode):
    """Floating-point operations (2 per multiply-add) of the matmuls and convolutions run under it,
    as ``torch.utils.flop_counter`` counts them (transposed convolutions by their real work); works
    under ``torch.inference_mode`` (FlopCounterMode's module tracking does not)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        count = flop_registry.get(func._overloadpacket)
        if count is None:
            # e.g. conv2d → convolution (under inference_mode conv2d reaches the mode whole);
            # the mode is re-entered so that the decomposition's ops are counted
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if count is not None:
            self.flops += count(*args, **kwargs, out_val=out)
        return out


def count_flops(fn):
    """FLOPs of one call of ``fn()``."""
    counter = FlopCounter()
    with counter:
        fn()
    return counter.flops


def peak_gflops(device="cpu", dtypes=(torch.float32, torch.bfloat16)):
    """The machine's measured peak in this process: GFLOP/s of a 3x3 convolution (256→256 channels,
    100x168, channels-last: a res3-like layer) and of a 2048² matmul, per dtype. {dtype name: (conv,
    matmul)}."""
    res = {}
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        x = torch.randn(1, 256, 100, 168, generator=g).to(device, dtype)
        w = torch.randn(256, 256, 3, 3, generator=g).to(device, dtype)
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        a = torch.randn(2048, 2048, generator=g).to(device, dtype)
        with torch.inference_mode():
            t_conv, _ = timed(lambda: F.conv2d(x, w, padding=1), warmup=2, repeat=5)
            t_mm, _ = timed(lambda: a @ a, warmup=2, repeat=5)
        conv_flops = 2 * 256 * 256 * 9 * 100 * 168
        res[str(dtype).replace("torch.", "")] = (
            conv_flops / t_conv / 1e9,
            2 * 2048**3 / t_mm / 1e9,
        )
    return res


def peak_line(peaks):
    return "measured peak (GFLOP/s, conv 3x3 / matmul): " + ", ".join(
        f"{name} {conv:.0f} / {mm:.0f}" for name, (conv, mm) in peaks.items()
    )


def fake_image(h, w, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float().to(device)
