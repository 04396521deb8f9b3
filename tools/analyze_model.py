#!/usr/bin/env python
"""FLOPs, parameters, activations and structure of a DETR panoptic model, as Detectron2's
tools/analyze_model.py reports them, for a YAML or a LazyConfig config.

python tools/analyze_model.py --config-file configs/toy/detr_R18_toy_stage2.yaml \
    --tasks flop parameter --num-inputs 4 [KEY VALUE ...]
python tools/analyze_model.py --config-file configs/COCO-PanopticSegmentation/detr_R_50_stage2.py \
    --tasks flop activation --input-size 800 1088 [key=value ...]

Inputs are the first ``--num-inputs`` images of the config's first test data set, as its test
loader gives them, or with ``--input-size H W`` random images of that size (no data set needed).
FLOPs are those of the network the model runs at inference (backbone, transformer, heads and the
mask head on the queries the post-processor reads), counted by ``torch.utils.flop_counter`` on the
eager kernels (fvcore's jit trace would count the export graph's, whose mask head does more
work), attention included; the total is in Detectron2's unit, one per multiply-add, and at two per
multiply-add (the benchmarks' unit); the table in the latter. Activations are fvcore's count (the
outputs of convolutions and matmuls) on the traced network. The data-dependent post-processing
(merge, resize) is not counted.
Weights: ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` when set (converted on load), else random.
"""

import argparse
import logging

import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.analysis import parameter_count_table
from detectron2.utils.logger import setup_logger
from fvcore.nn import ActivationCountAnalysis
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.lazy import yaml_config

logger = logging.getLogger("detr_panoptic_d2.analyze_model")
TASKS = ("flop", "parameter", "activation", "structure")


class InferenceNetwork(nn.Module):
    """The tensors the model computes at inference for a preprocessed batch: DETR's outputs (in
    ``MODEL.DETR.TEST.PRECISION``), and the mask head's logits for the queries the post-processor
    reads (as ``DetrPanoptic.inference`` chooses them). images: (B, 3, H, W) normalized,
    padding_mask: (B, H, W) bool."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, padding_mask):
        m = self.model
        outputs, features = m.run_body(images, padding_mask)
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if m.mask_head is None:
            return logits, boxes
        return logits, boxes, torch.cat([s.mask_logits for s in m.select(outputs, features)])


def load_config(args):
    """(config, is_lazy) of --config-file with the command line's overrides."""
    if args.config_file.endswith(".py"):
        cfg = LazyConfig.load(args.config_file)
        return LazyConfig.apply_overrides(cfg, args.opts), True
    return yaml_config(args.config_file, args.opts), False


def build(cfg, lazy):
    """The model in eval mode, its weights loaded when the config names them."""
    if lazy:
        model = instantiate(cfg.model).to(cfg.train.get("device", "cpu"))
        weights = cfg.train.get("init_checkpoint", "")
    else:
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
    if weights:
        DetrCheckpointer(model).load(weights)
    else:
        logger.info("no weights in the config: random initialization")
    return model.eval()


def sample_inputs(cfg, lazy, args):
    """``--num-inputs`` batched inputs (lists of one dict) of the test loader, or random images."""
    if args.input_size:
        h, w = args.input_size
        g = torch.Generator().manual_seed(0)
        return [
            [{"image": torch.randint(0, 256, (3, h, w), generator=g).float(), "height": h,
              "width": w}]
            for _ in range(args.num_inputs)
        ]  # fmt: skip
    if lazy:
        loader = instantiate(cfg.dataloader.test)
    else:
        if not cfg.DATASETS.TEST:
            raise SystemExit("DATASETS.TEST is empty: give --input-size H W")
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    inputs = []
    for batch in loader:
        inputs.append(batch)
        if len(inputs) == args.num_inputs:
            break
    return inputs


def network_inputs(model, batch):
    images, mask = model.preprocess_image(batch)
    return images.tensor, mask


def do_flop(model, inputs):
    """Mean GFlops over ``inputs``, one per multiply-add (Detectron2's and fvcore's unit), counted
    by ``torch.utils.flop_counter`` on the eager network: the kernels inference runs (folded
    BatchNorm, the mask head's per-image and per-row parts), attention included."""
    net = InferenceNetwork(model)
    totals, table = [], None
    for batch in inputs:
        counter = FlopCounterMode(display=False, depth=4)
        with counter:
            net(*network_inputs(model, batch))
        if table is None:
            table = counter.get_table(depth=4)
            logger.info(
                "Flops table (two per multiply-add) computed from only one input sample:\n" + table
            )
        totals.append(counter.get_total_flops() / 2)
    mean, std = np.mean(totals) / 1e9, np.std(totals) / 1e9
    logger.info(f"Total GFlops: {mean:.1f}±{std:.1f}")
    print(
        f"Total GFlops (one per multiply-add, as Detectron2 counts): {mean:.2f}±{std:.2f}; "
        f"GFLOP at two per multiply-add: {2 * mean:.2f}"
    )
    return mean


def do_activation(model, inputs):
    net = InferenceNetwork(model)
    totals = []
    for batch in inputs:
        acts = ActivationCountAnalysis(net, network_inputs(model, batch))
        acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        totals.append(acts.total())
    mean, std = np.mean(totals) / 1e6, np.std(totals) / 1e6
    logger.info(f"Total (Million) Activations: {mean:.2f}±{std:.2f}")
    print(f"Total (Million) Activations: {mean:.2f}±{std:.2f}")
    return mean


def do_parameter(model):
    table = parameter_count_table(model, max_depth=5)
    logger.info("Parameter Count:\n" + table)
    print(table)


def do_structure(model):
    logger.info("Model Structure:\n" + str(model))
    print(model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--tasks", choices=TASKS, required=True, nargs="+")
    parser.add_argument("-n", "--num-inputs", default=1, type=int, help="images to average over")
    parser.add_argument(
        "--input-size", nargs=2, type=int, metavar=("H", "W"), help="random images of this size"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    if args.num_inputs < 1:
        parser.error("--num-inputs must be >= 1")
    setup_logger(name="fvcore")
    setup_logger(name="detr_panoptic_d2")
    cfg, lazy = load_config(args)
    key, device = (
        ("train.device", cfg.train.get("device", "cpu"))
        if lazy
        else ("MODEL.DEVICE", cfg.MODEL.DEVICE)
    )
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"{key} {device}: CUDA is not available, cpu instead")
        if lazy:
            cfg.train.device = "cpu"
        else:
            cfg.defrost()
            cfg.MODEL.DEVICE = "cpu"
    if not lazy:  # a LazyConfig's loaders register the data sets they read
        from detr_panoptic_d2.data import register_datasets_from_cfg

        register_datasets_from_cfg(cfg)
    model = build(cfg, lazy)
    inputs = None
    if {"flop", "activation"} & set(args.tasks):
        inputs = sample_inputs(cfg, lazy, args)
    with torch.no_grad():
        for task in args.tasks:
            if task == "flop":
                do_flop(model, inputs)
            elif task == "activation":
                do_activation(model, inputs)
            elif task == "parameter":
                do_parameter(model)
            else:
                do_structure(model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
