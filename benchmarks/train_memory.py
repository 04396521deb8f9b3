#!/usr/bin/env python
"""Training memory of a step, by part, measured on the device at hand and scaled to another batch.

    python benchmarks/train_memory.py [--config coco|toy] [--size 800 1333] [--batch 1]
        [--scale-to-batch 4] [--targets 10] [--device cpu] [--amp none|bf16|fp16]

What autograd keeps for backward is counted with ``torch.autograd.graph.saved_tensors_hooks``
(each storage once, parameters left out) and attributed to the part of the model that was running:
backbone, transformer encoder, decoder, mask head, the rest (input projection, heads, losses).
Tensors whose last two dimensions are (queries or tokens) x tokens are the attention matrices
that the explicit attention path keeps (a fused kernel keeps O(tokens) per head instead); they
are listed apart. Weights, gradients and AdamW's two moments are counted from the parameters.
Activations grow linearly with the batch, so ``--scale-to-batch`` multiplies the measured ones;
weights and optimizer state do not grow. The figures are lower bounds of the peak: the allocator's
caching and the kernels' workspaces come on top.
"""

import argparse
import collections
import os

import torch
from bench_train_step import CONFIGS, make_batch
from common import build_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

PARTS = ("backbone", "encoder", "decoder", "mask head", "rest")


class SavedTensorMeter:
    """Bytes of the tensors autograd saves during a forward, per part of the model."""

    def __init__(self, model):
        self.model = model
        self.tokens = None  # the encoder's sequence length L, seen by its first layer
        self.part = ["rest"]
        self.bytes = collections.Counter()
        self.seen = set()
        self.params = {p.data_ptr() for p in model.parameters()}
        detr = model.detr
        self.handles = []
        parts = [("backbone", detr.backbone), ("mask head", getattr(model, "mask_head", None))]
        parts += [("encoder", layer) for layer in detr.transformer.encoder_layers]
        parts += [("decoder", layer) for layer in detr.transformer.decoder_layers]
        for name, module in parts:
            if module is None:
                continue
            self.handles.append(module.register_forward_pre_hook(self._enter(name)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name):
        def hook(module, inputs):
            self.part.append(name)
            if name == "encoder":  # (L, B, C): the encoder's sequence length
                self.tokens = inputs[0].shape[0]

        return hook

    def _leave(self, module, inputs, output):
        self.part.pop()

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            nbytes = t.untyped_storage().nbytes()
            part = self.part[-1]
            if t.dim() >= 2 and t.shape[-1] == self.tokens and part in ("encoder", "decoder"):
                part = f"{part} attention matrices"
            self.bytes[part] += nbytes
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        for h in self.handles:
            h.remove()


def measure(cfg, batch, amp, device):
    """(saved bytes per part, parameter bytes, trainable parameter bytes, loss)."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with EventStorage(), SavedTensorMeter(model) as meter:
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            losses = model(batch)
            loss = sum(losses.values())
    loss.backward()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return meter.bytes, weights, trainable, float(loss.detach()), meter.tokens


def report(name, saved, weights, trainable, batch, scale_to, tokens):
    gb = 1024**3
    factor = scale_to / batch
    print(f"\n{name}: encoder tokens {tokens}; activations measured at batch {batch}, "
          f"scaled x{factor:g} to batch {scale_to}")  # fmt: skip
    print(f"{'part':>34} | {'measured GB':>11} | {'batch ' + str(scale_to) + ' GB':>10}")
    total = 0.0
    for part in sorted(saved, key=lambda p: (PARTS.index(p.split(" attention")[0]), p)):
        scaled = saved[part] * factor / gb
        total += scaled
        print(f"{part:>34} | {saved[part] / gb:>11.3f} | {scaled:>10.2f}")
    attention = sum(v for k, v in saved.items() if "attention" in k) * factor / gb
    rows = [
        ("activations", total),
        ("  of which attention matrices", attention),
        ("weights", weights / gb),
        ("gradients", trainable / gb),
        ("AdamW moments", 2 * trainable / gb),
    ]
    for label, value in rows:
        print(f"{label:>34} | {'':>11} | {value:>10.2f}")
    whole = total + weights / gb + 3 * trainable / gb
    print(f"{'total (explicit attention)':>34} | {'':>11} | {whole:>10.2f}")
    print(f"{'total (fused attention)':>34} | {'':>11} | {whole - attention:>10.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="coco", choices=sorted(CONFIGS))
    p.add_argument("--size", type=int, nargs=2, default=(800, 1333))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--scale-to-batch", type=int, default=4)
    p.add_argument("--targets", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stage1_file, stage2_file = CONFIGS[args.config]
    h, w = args.size
    cfg1 = build_cfg(stage1_file, opts=["MODEL.MASK_HEAD.NAME", ""], device=args.device)
    batch = make_batch(args.batch, h, w, args.targets, cfg1.MODEL.DETR.NUM_CLASSES, args.device)
    print(f"{args.config} {h}x{w}, {args.targets} targets/image, amp {args.amp}, {args.device}")
    saved, weights, trainable, _, tokens = measure(cfg1, batch, args.amp, args.device)
    report("stage 1", saved, weights, trainable, args.batch, args.scale_to_batch, tokens)
    torch.manual_seed(0)
    ckpt = os.path.join(os.environ.get("TMPDIR", "/tmp"), "train_memory_stage1.pth")
    torch.save({"model": build_model(cfg1).state_dict()}, ckpt)
    cfg2 = build_cfg(stage2_file, opts=["MODEL.DETR.FROZEN_WEIGHTS", ckpt], device=args.device)
    saved, weights, trainable, _, tokens = measure(cfg2, batch, args.amp, args.device)
    report("stage 2 (matched queries)", saved, weights, trainable, args.batch,
           args.scale_to_batch, tokens)  # fmt: skip
    os.remove(ckpt)


if __name__ == "__main__":
    main()
