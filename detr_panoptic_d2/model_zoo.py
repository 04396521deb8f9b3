"""The plugin's configs by name, as ``detectron2.model_zoo`` gives Detectron2's own (it cannot see a
plugin's):

    from detr_panoptic_d2 import model_zoo
    cfg = model_zoo.get_config("COCO-PanopticSegmentation/detr_R_50_stage2.yaml", trained=True)
    model = model_zoo.get("COCO-PanopticSegmentation/detr_R_50_stage2.py", trained=True)

A name is a path under ``configs/``: ``.yaml`` gives the YACS ``CfgNode`` (the plugin's keys added,
``_BASE_`` resolved), ``.py`` its LazyConfig twin. ``trained=True`` sets the weights
(``MODEL.WEIGHTS`` / ``train.init_checkpoint``) to the official DETR checkpoint of that model, a
URL that every loader of the model reads converted (``DetrCheckpointer`` on load; Detectron2's
``DetectionCheckpointer`` and ``DefaultPredictor`` through the plugin's handler of these URLs in
Detectron2's ``PathManager``, which converts the download once).
"""

import os

import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.modeling import build_model

from .checkpoint import OFFICIAL_PREFIX, DetrCheckpointer
from .lazy import yaml_config

# The official DETR panoptic checkpoints (DETR's model zoo): the whole model, boxes and masks; a
# stage-1 config loads the box part of the same file.
OFFICIAL_WEIGHTS = {
    "COCO-PanopticSegmentation/detr_R_50": OFFICIAL_PREFIX + "detr-r50-panoptic-00ce5173.pth",
    "COCO-PanopticSegmentation/detr_R_50_DC5": OFFICIAL_PREFIX
    + "detr-r50-dc5-panoptic-da08f1b1.pth",
    "COCO-PanopticSegmentation/detr_R_101": OFFICIAL_PREFIX + "detr-r101-panoptic-40021d53.pth",
}


def _config_roots():
    here = os.path.dirname(os.path.abspath(__file__))
    # the checkout's configs/ (pip install -e), else the copy inside an installed wheel
    return [os.path.join(os.path.dirname(here), "configs"), os.path.join(here, "configs")]


def get_config_file(name):
    """The path of the shipped config ``name`` ("toy/detr_R18_toy_stage1.yaml", ...)."""
    for root in _config_roots():
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    shipped = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for root in _config_roots()
        if os.path.isdir(root)
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith((".yaml", ".py")) and not f.startswith("Base-")
    )
    raise RuntimeError(f"{name!r} is not a shipped config; shipped: {shipped}")


def checkpoint_url(name):
    """The official DETR checkpoint of the config ``name``; an error for a config without one."""
    stem = os.path.splitext(name)[0]
    for prefix, url in OFFICIAL_WEIGHTS.items():
        if stem in (prefix + "_stage1", prefix + "_stage2"):
            return url
    raise RuntimeError(
        f"{name!r} has no trained weights (official DETR checkpoints exist for "
        f"{sorted(p + '_stage{1,2}' for p in OFFICIAL_WEIGHTS)}); use trained=False"
    )


def get_config(name, trained=False):
    """The config ``name``: a ``CfgNode`` for ``.yaml``, a LazyConfig for ``.py``; with
    ``trained``, its weights are the official checkpoint (:func:`checkpoint_url`)."""
    path = get_config_file(name)
    if name.endswith(".yaml"):
        cfg = yaml_config(path)
        if trained:
            cfg.MODEL.WEIGHTS = checkpoint_url(name)
        return cfg
    if not name.endswith(".py"):
        raise ValueError(f"config name must end in .yaml or .py, got {name!r}")
    cfg = LazyConfig.load(path)
    if trained:
        cfg.train.init_checkpoint = checkpoint_url(name)
    return cfg


def get(name, trained=False, device=None):
    """The model of the config ``name``, its weights loaded (the official ones with ``trained``),
    on ``device`` (default: cuda when available, else cpu), in training mode as Detectron2's
    ``model_zoo.get`` returns it (``.eval()`` for inference)."""
    cfg = get_config(name, trained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(cfg, CfgNode):
        cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        weights = cfg.MODEL.WEIGHTS
    else:
        cfg.train.device = device
        model = instantiate(cfg.model).to(device)
        weights = cfg.train.init_checkpoint
    if weights:
        DetrCheckpointer(model).load(weights)
    return model
