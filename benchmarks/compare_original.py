#!/usr/bin/env python
"""Fidelity to the original DETR: the same weights and image through the original implementation (a
local checkout) and through the plugin; prints the largest differences of the raw outputs and the
panoptic agreement.

    python benchmarks/compare_original.py --reference-repo PATH_TO_ORIGINAL_DETR_CHECKOUT
        [--size 480 640] [--variant r50 dc5 r101 prenorm] [--kept 30] [--threads 2]
        [--precision fp32]

Weights: the original's model with random weights (FrozenBatchNorm statistics, norms and biases
randomized so that every mapping matters), converted by the plugin's converter. Raw outputs: class
logits (the original's COCO-id rows remapped to the plugin's contiguous classes), boxes, mask logits
of every query. Panoptic: a hook on both class heads makes the first --kept queries predict fixed
classes (things and stuff) with probability ~1 (random weights keep none), the others no-object;
both models then run their own panoptic post-processing (the plugin with DETR's merge). Agreement =
share of pixels whose segment corresponds (best one-to-one matching of segment ids, same category).
--precision runs the plugin at MODEL.DETR.TEST.PRECISION (its inference fast paths: folded
BatchNorm, the reformulated mask head, bf16), the original in float32.
"""

import argparse
import io
import os
import subprocess
import sys

import numpy as np
import torch
from common import build_cfg, machine_line
from reference import OriginalDetrPanoptic, reference_env

VARIANTS = {
    "r50": [],
    "dc5": ["MODEL.RESNETS.RES5_DILATION", "2"],
    "r101": ["MODEL.RESNETS.DEPTH", "101"],
    "prenorm": ["MODEL.DETR.PRE_NORM", "True"],
}


def randomize_(model, seed=1):
    """Frozen BatchNorm statistics, norm weights and biases to random values (all else keeps its
    init), and the mask head made query-specific (attention maps weighted up, sharper attention,
    backbone adapters weighted down). With the decoder's queries left as initialized they still get
    nearly the same masks (half the pixels have their two best within 1.4e-4), so float rounding
    decides the argmax: the original disagrees with itself on 0.23 % of the pixels between 1 and 2
    threads. ``distinct_queries`` gives each query its own decoder output, as training does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            elif name.endswith("weight") and ("norm" in name or ".gn" in name):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        lay1 = (
            model.mask_head.lay1.weight
        )  # input: [projected features (hidden_dim) | attention maps (M)]
        lay1[:, model.detr.transformer.d_model :] *= 1e5
        model.bbox_attention.q_linear.weight *= 10  # more peaked, query-specific attention maps
        for adapter in (
            model.mask_head.adapter1,
            model.mask_head.adapter2,
            model.mask_head.adapter3,
        ):
            adapter.weight *= 1e-3  # else the backbone's random activations swamp the rest


def force_classes(class_embed, rows):
    """Forward hook: query i < len(rows) predicts class row rows[i] with probability ~1, the rest
    no-object."""

    def hook(module, inputs, output):
        out = torch.full_like(output, -10.0)
        out[..., len(rows) :, -1] = 10.0
        for i, r in enumerate(rows):
            out[..., i, r] = 10.0
        return out + 0.0 * output

    return class_embed.register_forward_hook(hook)


def distinct_queries(transformer, scale=2.0, seed=2):
    """Forward hook: the decoder output of query i (every layer) shifted by a fixed random vector
    (seeded, ``scale`` x standard normal per channel), the same in both models. A trained decoder
    gives each query its own embedding; a randomly initialized one gives all queries nearly the
    same, so their masks differ by ~1e-4 over most pixels and the panoptic argmax is decided by
    float rounding (the original then disagrees with itself at another thread count). 0: no
    shift."""

    def hook(module, inputs, output):
        hs, memory = output  # (L, B, N, C), (B, C, h, w)
        g = torch.Generator().manual_seed(seed)
        shift = torch.randn(hs.shape[2], hs.shape[3], generator=g) * scale
        return hs + shift.to(device=hs.device, dtype=hs.dtype), memory

    return transformer.register_forward_hook(hook)


def test_image(h, w, seed=0):
    """A smooth image with a few shapes (random noise would make every mask a fragment field)."""
    from detr_panoptic_d2.data.toy_dataset import generate_toy_panoptic  # noqa: F401  (documented dependency)

    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [128 + 100 * np.sin(xx / (17 + 13 * c) + yy / (23 + 7 * c)) for c in range(3)], -1
    )
    for _ in range(6):
        cy, cx, r = g.uniform(0, h), g.uniform(0, w), g.uniform(0.05, 0.25) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = g.uniform(0, 255, 3)
    return torch.as_tensor(img.clip(0, 255).astype(np.uint8)).permute(2, 0, 1).float()


def panoptic_agreement(ids_a, cats_a, ids_b, cats_b):
    """Share of pixels on which two segmentations agree: segment ids matched one-to-one by largest
    overlap (Hungarian), a pixel agrees when its two segments are matched and have the same category
    (void: id 0 in both counts as agreeing)."""
    from scipy.optimize import linear_sum_assignment

    ua, ia = np.unique(ids_a, return_inverse=True)
    ub, ib = np.unique(ids_b, return_inverse=True)
    overlap = np.zeros((len(ua), len(ub)), np.int64)
    np.add.at(overlap, (ia.ravel(), ib.ravel()), 1)
    rows, cols = linear_sum_assignment(-overlap)
    agree = sum(
        overlap[r, c] for r, c in zip(rows, cols) if cats_a.get(ua[r], -1) == cats_b.get(ub[c], -1)
    )
    return agree / ids_a.size


def compare(variant, size, kept, precision="fp32", query_spread=2.0):
    """One variant: returns a dict of max |differences| and the panoptic agreements (plugin vs
    original; the original vs itself at another thread count, the float-rounding floor; the
    original's raw outputs through the plugin's post-processing)."""
    import detectron2.data.datasets  # noqa: F401  (builtin COCO panoptic metadata: the thing/stuff split)
    from detectron2.modeling import build_model
    from panopticapi.utils import rgb2id
    from PIL import Image

    from detr_panoptic_d2.checkpoint import contiguous_id_map

    cfg = build_cfg(
        opts=VARIANTS[variant]
        + ["MODEL.DETR.TEST.INSTANCE_ON", "False", "MODEL.DETR.TEST.PRECISION", precision]
    )
    cfg.DATASETS.TEST = ("coco_2017_val_panoptic",)
    original = OriginalDetrPanoptic(cfg)
    randomize_(original.model)
    plugin = build_model(cfg).eval()
    original.copy_weights_to(plugin)
    decoders = (original.model.detr.transformer, plugin.detr.transformer)
    hooks = [distinct_queries(t, query_spread) for t in decoders]
    h, w = size
    image = test_image(h, w)
    id_map = contiguous_id_map("coco_panoptic")
    order = torch.tensor([d for d, _ in sorted(id_map.items(), key=lambda kv: kv[1])] + [250])
    with torch.no_grad():
        ref = original.model([(image / 255.0 - original.mean) / original.std])
        images, mask = plugin.preprocess_image([{"image": image}])
        out, features = plugin.run_body(images.tensor, mask)
        n = out["pred_logits"].shape[1]
        masks = plugin.mask_head(
            features,
            torch.zeros(n, dtype=torch.long),
            torch.arange(n),
            **plugin.prepare_inference().mask_head_kwargs(),
        )
    result = {
        "logits": (out["pred_logits"] - ref["pred_logits"][..., order]).abs().max().item(),
        "boxes": (out["pred_boxes"] - ref["pred_boxes"]).abs().max().item(),
        "masks": (masks - ref["pred_masks"][0]).abs().max().item(),
    }
    # panoptic: the same forced classes through both post-processings
    things = [d for d in id_map if d <= 90]
    stuff = [d for d in id_map if d > 90]
    dataset_ids = [
        (things if i % 3 else stuff)[(i * 7) % len(things if i % 3 else stuff)] for i in range(kept)
    ]
    hooks += [
        force_classes(original.class_embed, dataset_ids),
        force_classes(plugin.detr.class_embed, [id_map[d] for d in dataset_ids]),
    ]
    threads = torch.get_num_threads()
    with torch.no_grad():
        (ref_pan,) = original(image)
        (res,) = plugin([{"image": image, "height": h, "width": w}])
        raw = original.model([(image / 255.0 - original.mean) / original.std])
        torch.set_num_threads(1 if threads > 1 else 2)
        (self_pan,) = original(image)
        torch.set_num_threads(threads)
    for hook in hooks:
        hook.remove()
    ref_ids = rgb2id(np.asarray(Image.open(io.BytesIO(ref_pan["png_string"])).convert("RGB")))
    ref_cats = {s["id"]: s["category_id"] for s in ref_pan["segments_info"]}
    ids, info = res["panoptic_seg"]
    cats = {s["id"]: order[s["category_id"]].item() for s in info}  # contiguous → COCO id
    # the original's first segment has id 0, which it also leaves for void pixels: tell them apart
    # by category
    result["segments"] = (len(ref_pan["segments_info"]), len(info))
    self_ids = rgb2id(np.asarray(Image.open(io.BytesIO(self_pan["png_string"])).convert("RGB")))
    self_cats = {s["id"]: s["category_id"] for s in self_pan["segments_info"]}
    result["self_agreement"] = panoptic_agreement(ref_ids, ref_cats, self_ids, self_cats)
    result["agreement"] = panoptic_agreement(ref_ids, ref_cats, ids.numpy(), {0: -1, **cats})
    # the original's raw outputs through the plugin's post-processing: the merge alone
    logits = raw["pred_logits"][0][:, order]
    selection = plugin.postprocessor.select(logits)
    queries = selection.needs_mask.nonzero()[:, 0]
    selection.attach_masks(queries, raw["pred_masks"][0][queries])
    res = plugin.postprocessor(selection, logits, raw["pred_boxes"][0], (h, w), (h, w), (h, w))
    ids, info = res["panoptic_seg"]
    cats = {s["id"]: order[s["category_id"]].item() for s in info}
    result["merge_agreement"] = panoptic_agreement(ref_ids, ref_cats, ids.numpy(), {0: -1, **cats})
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-repo", required=True)
    p.add_argument("--size", type=int, nargs=2, default=(480, 640))
    p.add_argument("--variant", nargs="+", default=["r50"], choices=sorted(VARIANTS))
    p.add_argument("--kept", type=int, default=30)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument(
        "--query-spread",
        type=float,
        default=2.0,
        help="scale of the fixed per-query shift of the decoder output (distinct_queries); 0: "
        "the random init's near-identical queries, where float rounding decides the argmax",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:  # import the original in a child process whose PYTHONPATH holds the checkout
        cmd = [sys.executable, os.path.abspath(__file__), "--child", *sys.argv[1:]]
        return subprocess.run(cmd, env=reference_env(args.reference_repo)).returncode
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(
        f"{args.size[0]}x{args.size[1]} image, {args.kept} forced queries, plugin in "
        f"{args.precision}, query spread {args.query_spread}; max |plugin - original|; "
        "agreements: plugin vs original, original vs itself at another thread count (the rounding "
        "floor), the original's raw outputs through the plugin's post-processing"
    )
    print(
        f"{'variant':>8} | {'logits':>8} | {'boxes':>8} | {'masks':>8} | {'segments':>9} | "
        f"{'panoptic agreement':>18} | {'orig. vs itself':>15} | {'merge agreement':>15}"
    )
    for variant in args.variant:
        r = compare(variant, args.size, args.kept, args.precision, args.query_spread)
        seg = f"{r['segments'][0]}/{r['segments'][1]}"
        print(
            f"{variant:>8} | {r['logits']:>8.1e} | {r['boxes']:>8.1e} | {r['masks']:>8.1e} | "
            f"{seg:>9} | {r['agreement']:>18.6f} | {r['self_agreement']:>15.6f} | "
            f"{r['merge_agreement']:>15.6f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
