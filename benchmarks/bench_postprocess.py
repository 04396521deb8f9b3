#!/usr/bin/env python
"""Panoptic post-processing time vs. number of kept queries (mask upsampling + merge), at 800x1333.

"upsample + merge": the masks upsampled to the image (Q, H, W), then DETR's merge (the default);
"stride-4 merge": DETR's merge reading the stride-4 logits (``upsample=``: the argmax in cache-sized
row slabs, what the eager model runs); MaskFormer's merge (PANOPTIC_MERGE: "maskformer") of the
upsampled masks beside them.

    python benchmarks/bench_postprocess.py [--threads 2] [--device cpu] [--size 800 1333]
        [--with-model]

Random mask logits (the worst case: many small fragments for the small-segment filter). With
--with-model, the R-50 model's own time for the same number of queries (backbone, transformer and
mask head, the rest of inference) is measured too, and the stride-4 merge is printed as a share of
it.
"""

import argparse

import torch
from common import build_cfg, build_eval_model, fake_image, machine_line, timed

from detr_panoptic_d2.modeling.postprocess import maskformer_merge, panoptic_merge, upsample_masks


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, nargs=2, default=(800, 1333))
    p.add_argument("--kept", type=int, nargs="+", default=(10, 50, 100))
    p.add_argument("--num-classes", type=int, default=133)
    p.add_argument("--with-model", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.size
    hm, wm = (h + 31) // 32 * 8, (w + 31) // 32 * 8  # stride-4 mask size of the padded canvas
    is_thing = torch.arange(args.num_classes, device=args.device) < 80
    print(machine_line(args.device))
    model = build_eval_model(build_cfg(device=args.device)) if args.with_model else None
    header = (
        f"{'kept':>5} | {'upsample ms':>11} | {'merge ms':>8} | {'upsample + merge ms':>19} | "
        f"{'stride-4 merge ms':>17} | {'maskformer merge ms':>19}"
    )
    print(header + (f" | {'model ms':>8} | {'share':>6}" if model is not None else ""))
    for k in args.kept:
        g = torch.Generator().manual_seed(k)
        logits = torch.randn(k, hm, wm, generator=g).to(args.device) * 4
        classes = torch.randint(0, args.num_classes, (k,), generator=g).to(args.device)
        scores = torch.rand(k, generator=g).to(args.device)
        with torch.inference_mode():
            t_up, _ = timed(lambda: upsample_masks(logits, (hm * 4, wm * 4), (h, w)))
            up = upsample_masks(logits, (hm * 4, wm * 4), (h, w))
            t_merge, _ = timed(lambda: panoptic_merge(up, classes, scores, is_thing, (h, w)))
            t_mf, _ = timed(lambda: maskformer_merge(up, classes, scores, is_thing, (h, w)))
            t_s4, _ = timed(
                lambda: panoptic_merge(
                    logits, classes, scores, is_thing, (h, w), upsample=((hm * 4, wm * 4), (h, w))
                )
            )
        row = (
            f"{k:>5} | {t_up * 1e3:>11.1f} | {t_merge * 1e3:>8.1f} | "
            f"{(t_up + t_merge) * 1e3:>19.1f} | {t_s4 * 1e3:>17.1f} | {t_mf * 1e3:>19.1f}"
        )
        if model is not None:
            t_model = model_time(model, h, w, k, args.device)
            row += f" | {t_model * 1e3:>8.0f} | {100 * t_s4 / t_model:>5.1f}%"
        print(row, flush=True)


def model_time(model, h, w, kept, device):
    """Backbone + transformer + heads + mask head for ``kept`` queries: the model's share of
    inference."""
    inputs = [{"image": fake_image(h, w, device)}]
    q = torch.arange(kept, device=device)

    def run():
        with torch.inference_mode():
            images, mask = model.preprocess_image(inputs)
            _, features = model.detr(images.tensor, mask)
            model.mask_head(features, torch.zeros_like(q), q)

    t, _ = timed(run, warmup=1, repeat=5)
    return t


if __name__ == "__main__":
    main()
