"""Shared pieces of the benchmarks: model construction, controlled number of kept queries, timing, memory."""

import os
import platform
import resource
import statistics

import torch
import torch.utils.benchmark as benchmark
from detectron2.config import get_cfg
from detectron2.modeling import build_model

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
    """Forward hook on a class head: the first ``num_kept`` queries predict ``class_id`` with probability ~1,
    the others no-object, so that exactly ``num_kept`` queries pass the panoptic threshold (random weights
    would keep none). Works on any module whose output is (..., N, K+1) logits."""

    def hook(module, inputs, output):
        out = torch.full_like(output, -10.0)
        out[..., num_kept:, -1] = 10.0
        out[..., :num_kept, class_id] = 10.0
        # keep a dependence on the real output so that nothing upstream is optimized away
        return out + 0.0 * output

    return class_embed.register_forward_hook(hook)


def timed(fn, warmup=2, repeat=5):
    """Median and all wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs, each run timed
    by ``torch.utils.benchmark.Timer`` (which synchronizes CUDA)."""
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    times = [timer.timeit(number=1).median for _ in range(repeat)]
    return statistics.median(times), times


def peak_rss_gb():
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine_line(device="cpu"):
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}"
    return (
        f"device: CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads | "
        f"torch {torch.__version__}"
    )


def fake_image(h, w, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float().to(device)
