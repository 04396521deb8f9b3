"""The plugin in Detectron2's LazyConfig world.

Every LazyConfig under ``configs/`` is the twin of the YAML file of the same name: it loads that
YAML (``_BASE_`` resolved, the plugin's defaults added) and :func:`lazy_config_from_yaml` turns the
values it holds into ``LazyCall``\\ s of the plugin's classes, so that a number (a default, a
recipe's value) is written once, in the YAML world, and the LazyConfig is edited the LazyConfig
way (``model.detr.num_queries=50`` on the command line, or assignments in a ``.py`` config).

Sections of a LazyConfig (as Detectron2's ``tools/lazyconfig_train_net.py`` reads them, plus
``datasets``):

* ``model``: ``L(DetrPanoptic)(detr=L(DETR)(backbone=L(detr_resnet_backbone)(...),
  transformer=L(Transformer)(...), ...), criterion=L(SetCriterion)(matcher=L(HungarianMatcher)(...),
  ...), postprocessor=L(PanopticPostProcessor)(...), mask_head=L(DetrMaskHead)(...) or None, ...)``.
  Facts that must agree inside the model are interpolations (``${..detr.num_classes}``), so that
  one override changes them all; ``model.frozen_weights=PATH`` makes it stage 2 (the criterion
  then trains the masks only, as ``MODEL.DETR.FROZEN_WEIGHTS`` does);
* ``dataloader``: ``train`` / ``test`` (Detectron2's ``build_detection_*_loader`` with the plugin's
  mapper and DETR's augmentations) and ``evaluator`` (:func:`detr_evaluator`: the evaluators of
  ``build_detr_evaluator``);
* ``optimizer``: :func:`detr_optimizer` (AdamW or SGD, backbone multiplier, full-model gradient
  clipping), ``optimizer.params.model`` set to the model before instantiating, as in Detectron2;
* ``lr_multiplier``: :func:`lr_schedule`, Detectron2's ``SOLVER.LR_SCHEDULER_NAME`` schedules;
* ``train``: Detectron2's ``common/train.py`` with the YAML's values (``device`` cpu where CUDA is
  not available, with a warning), plus ``amp.precision``, ``amp.auto``, ``time_budget_minutes``
  and ``seed``;
* ``datasets``: the train and test data set names and the toy set's generation options
  (``DATASETS.TOY``); the data sets are registered when the model, a loader or the evaluator is
  built from them.
"""

import logging
import os

import torch
from detectron2.config import CfgNode, LazyCall, get_cfg
from detectron2.layers import ShapeSpec

from .config import add_detr_panoptic_config
from .modeling.criterion import (
    loss_weights,
    stage_losses,
    supervised_aux_layers,
    trains_denoising,
)
from .solver import lr_schedule

logger = logging.getLogger(__name__)

L = LazyCall

__all__ = [
    "criterion_aux_layers",
    "criterion_denoising",
    "criterion_losses",
    "dataset_dicts",
    "detr_augmentations",
    "detr_evaluator",
    "detr_optimizer",
    "detr_param_groups",
    "detr_resnet_backbone",
    "lazy_config_from_yaml",
    "lr_schedule",
    "register_datasets",
    "resnet_feature_channels",
    "thing_classes",
    "yaml_config",
]


def yaml_config(path, opts=()):
    """The YACS config of a YAML file: Detectron2's defaults, the plugin's keys
    (:func:`add_detr_panoptic_config`), the file (``_BASE_`` resolved), then ``opts`` (KEY VALUE
    list)."""
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(os.fspath(path))
    cfg.merge_from_list(list(opts))
    return cfg


def _plugin_cfg():
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    return cfg


# ---- keyword fronts of the plugin's cfg-taking builders (LazyCall targets) ---------------------
def detr_resnet_backbone(
    *,
    depth=50,
    norm="FrozenBN",
    stride_in_1x1=False,
    res5_dilation=1,
    out_features=("res2", "res3", "res4", "res5"),
    freeze_at=2,
    res2_out_channels=256,
    stem_out_channels=64,
    num_groups=1,
    width_per_group=64,
    in_channels=3,
):
    """``build_detr_resnet_backbone`` (Detectron2's ResNet, DETR's DC5) with keyword arguments:
    each is the ``MODEL.RESNETS.*`` key of its name (``freeze_at``: ``MODEL.BACKBONE.FREEZE_AT``;
    ``in_channels``: the image channels)."""
    from .modeling.backbone import build_detr_resnet_backbone

    cfg = _plugin_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.NORM = norm
    r.STRIDE_IN_1X1 = stride_in_1x1
    r.RES5_DILATION = res5_dilation
    r.OUT_FEATURES = list(out_features)
    r.RES2_OUT_CHANNELS = res2_out_channels
    r.STEM_OUT_CHANNELS = stem_out_channels
    r.NUM_GROUPS = num_groups
    r.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    return build_detr_resnet_backbone(cfg, ShapeSpec(channels=in_channels))


def resnet_feature_channels(features, res2_out_channels=256):
    """Channels of the ResNet features ``features`` ("res2".."res5"): res2's, doubled per stage
    (the ``fpn_dims`` of :class:`DetrMaskHead`)."""
    return [int(res2_out_channels) * 2 ** (int(f[3:]) - 2) for f in features]


# The criterion's stage-dependent options, of ``model.frozen_weights`` (stage 2 when set) so that
# overriding it makes the LazyConfig stage 2 as MODEL.DETR.FROZEN_WEIGHTS does the YAML one.
def criterion_losses(has_masks, frozen_weights=""):
    return stage_losses(has_masks, bool(frozen_weights))


def criterion_aux_layers(num_decoder_layers, deep_supervision=True, frozen_weights=""):
    return supervised_aux_layers(num_decoder_layers, deep_supervision, bool(frozen_weights))


def criterion_denoising(dn_copies, frozen_weights=""):
    return trains_denoising(dn_copies, bool(frozen_weights))


def register_datasets(names, toy=None, generate=True):
    """Register the data sets ``names`` that the plugin provides (``register_datasets_from_cfg``):
    the toy splits with the options ``toy`` (``root``, ``num_train``, ``num_val``, ``image_size``,
    ``thing_colors``; generated on first use unless ``generate`` is False: the metadata needs no
    files) and the plugin's ADE20K / COCO-with-semantic names."""
    from .data.datasets import register_plugin_datasets
    from .data.registration import register_datasets_from_cfg
    from .data.toy_dataset import TOY_DATASET_NAMES, register_toy_panoptic

    names = [names] if isinstance(names, str) else list(names)
    cfg = _plugin_cfg()
    cfg.DATASETS.TRAIN = tuple(names)
    cfg.DATASETS.TEST = ()
    if toy:
        t = cfg.DATASETS.TOY
        t.ROOT = str(toy.get("root", t.ROOT))
        t.NUM_TRAIN = int(toy.get("num_train", t.NUM_TRAIN))
        t.NUM_VAL = int(toy.get("num_val", t.NUM_VAL))
        t.IMAGE_SIZE = tuple(toy.get("image_size", t.IMAGE_SIZE))
        t.THING_COLORS = str(toy.get("thing_colors", t.THING_COLORS))
    if generate:
        register_datasets_from_cfg(cfg)
        return
    if set(names) & set(TOY_DATASET_NAMES):
        register_toy_panoptic(cfg.DATASETS.TOY.ROOT, TOY_DATASET_NAMES)
    register_plugin_datasets(names)


def thing_classes(num_classes, test=(), train=(), toy=None):
    """(K,) bool thing classes from the metadata of the data sets ``test`` + ``train``
    (:func:`thing_classes_from_metadata`), registered first (without generating files)."""
    from .modeling.postprocess import thing_classes_from_metadata

    names = list(test) + list(train)
    register_datasets(names, toy, generate=False)
    return thing_classes_from_metadata(names, num_classes)


def detr_augmentations(
    *,
    is_train,
    min_size,
    max_size,
    sampling="choice",
    random_flip="horizontal",
    crop=None,
):
    """``build_detr_augmentations`` with keyword arguments: ``min_size`` / ``max_size`` are
    ``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` (``*_TEST`` when not ``is_train``), ``sampling``
    ``INPUT.MIN_SIZE_TRAIN_SAMPLING``, ``random_flip`` ``INPUT.RANDOM_FLIP``, ``crop`` a dict of
    ``INPUT.DETR_CROP`` (``enabled``, ``prob``, ``pre_resize``, ``size``)."""
    from .data.dataset_mapper import build_detr_augmentations

    cfg = _plugin_cfg()
    i = cfg.INPUT
    if is_train:
        i.MIN_SIZE_TRAIN = tuple(min_size) if not isinstance(min_size, int) else (min_size,)
        i.MAX_SIZE_TRAIN = max_size
    else:
        i.MIN_SIZE_TEST = min_size
        i.MAX_SIZE_TEST = max_size
    i.MIN_SIZE_TRAIN_SAMPLING = sampling
    i.RANDOM_FLIP = random_flip
    crop = dict(crop or {"enabled": False})
    i.DETR_CROP.ENABLED = bool(crop.get("enabled", False))
    i.DETR_CROP.PROB = float(crop.get("prob", i.DETR_CROP.PROB))
    i.DETR_CROP.PRE_RESIZE = tuple(crop.get("pre_resize", i.DETR_CROP.PRE_RESIZE))
    i.DETR_CROP.SIZE = tuple(crop.get("size", i.DETR_CROP.SIZE))
    return build_detr_augmentations(cfg, is_train)


def dataset_dicts(names, filter_empty=False, toy=None):
    """The dataset dicts of ``names`` (``load_dataset_dicts``: errors name the annotation file),
    after registering them (:func:`register_datasets`, the toy set generated if needed)."""
    from .engine.trainer import load_dataset_dicts

    names = [names] if isinstance(names, str) else list(names)
    register_datasets(names, toy)
    return load_dataset_dicts(names, filter_empty)


def detr_evaluator(
    dataset_names,
    output_dir,
    *,
    num_classes,
    has_masks,
    panoptic_on=True,
    instance_on=True,
    semantic_on=False,
    toy=None,
):
    """``build_detr_evaluator`` (PQ, AP of the thing classes, mIoU: what the registration supports)
    for the one data set in ``dataset_names``, the flags being those of the model's
    post-processor."""
    from .engine.evaluation import build_detr_evaluator

    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if len(names) != 1:
        raise ValueError(
            f"detr_evaluator evaluates one data set per run, got {names}: set datasets.test=[NAME]"
        )
    register_datasets(names, toy)
    cfg = _plugin_cfg()
    cfg.MODEL.DETR.NUM_CLASSES = num_classes
    cfg.MODEL.MASK_HEAD.NAME = "DetrMaskHead" if has_masks else ""
    t = cfg.MODEL.DETR.TEST
    t.PANOPTIC_ON, t.INSTANCE_ON, t.SEMANTIC_ON = panoptic_on, instance_on, semantic_on
    return build_detr_evaluator(cfg, names[0], os.path.join(output_dir, "inference", names[0]))


def _solver_cfg(base_lr, weight_decay=0.0, backbone_multiplier=1.0, name="ADAMW", momentum=0.9):
    cfg = _plugin_cfg()
    s = cfg.SOLVER
    s.BASE_LR, s.WEIGHT_DECAY, s.BACKBONE_MULTIPLIER = base_lr, weight_decay, backbone_multiplier
    s.OPTIMIZER, s.MOMENTUM = name, momentum
    s.CLIP_GRADIENTS.ENABLED = False
    return cfg


def detr_param_groups(model, base_lr, backbone_multiplier=0.1):
    """The parameter groups of ``build_detr_optimizer``: the trainable parameters at ``base_lr``,
    the backbone's at ``base_lr * backbone_multiplier``. ``model`` is set before instantiating
    (``cfg.optimizer.params.model = model``, Detectron2's convention)."""
    from .engine.optimizer import build_detr_optimizer

    cfg = _solver_cfg(base_lr, backbone_multiplier=backbone_multiplier, name="SGD")
    return [
        {"params": g["params"], "lr": g["lr"]}
        for g in build_detr_optimizer(cfg, model).param_groups
    ]


def detr_optimizer(
    params,
    *,
    lr,
    weight_decay,
    name="ADAMW",
    momentum=0.9,
    clip_gradients=None,
    impl="fused",
):
    """DETR's optimizer over ``params`` (:func:`detr_param_groups`), as ``build_detr_optimizer``
    builds it (:func:`~detr_panoptic_d2.engine.optimizer.make_optimizer`): AdamW (or SGD with
    ``momentum``), with ``clip_gradients`` (``enabled``, ``clip_type`` "full_model",
    ``clip_value``, ``norm_type``: ``SOLVER.CLIP_GRADIENTS``) the whole model's gradient norm
    clipped before each step, ``impl`` the update's implementation (``SOLVER.OPTIMIZER_IMPL``)."""
    from .engine.optimizer import make_optimizer

    return make_optimizer(
        params,
        lr=lr,
        weight_decay=weight_decay,
        name=name,
        momentum=momentum,
        clip_gradients=clip_gradients,
        impl=impl,
    )


# ---- LazyConfig sections from a YACS config ----------------------------------------------------
def _model(cfg):
    from .modeling import (
        DETR,
        DetrMaskHead,
        DetrPanoptic,
        HungarianMatcher,
        PanopticPostProcessor,
        SetCriterion,
        Transformer,
    )
    from .modeling.training_queries import TrainingQueries, wants_training_queries

    if cfg.MODEL.META_ARCHITECTURE != "DetrPanoptic":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE must be DetrPanoptic, got {cfg.MODEL.META_ARCHITECTURE}"
        )
    if cfg.MODEL.BACKBONE.NAME != "build_detr_resnet_backbone":
        raise ValueError(
            f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r}: the LazyConfig twin knows "
            "build_detr_resnet_backbone only"
        )
    d, r, t = cfg.MODEL.DETR, cfg.MODEL.RESNETS, cfg.MODEL.DETR.TEST
    head_name = cfg.MODEL.MASK_HEAD.NAME
    if head_name not in ("", "DetrMaskHead"):
        raise ValueError(
            f"MODEL.MASK_HEAD.NAME {head_name!r}: the LazyConfig twin knows DetrMaskHead"
        )
    has_masks = head_name == "DetrMaskHead"
    backbone = L(detr_resnet_backbone)(
        depth=r.DEPTH,
        norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        out_features=list(r.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        in_channels=len(cfg.MODEL.PIXEL_MEAN),
    )
    transformer = L(Transformer)(**Transformer.from_config(cfg))
    training_queries = None
    if wants_training_queries(d.GROUPS, d.DN.COPIES, d.DN.BOX_NOISE_SCALE, d.DN.LABEL_NOISE_RATIO):
        training_queries = L(TrainingQueries)(
            hidden_dim="${..transformer.d_model}",
            num_queries="${..num_queries}",
            num_classes="${..num_classes}",
            groups=d.GROUPS,
            dn_copies=d.DN.COPIES,
            box_noise_scale=d.DN.BOX_NOISE_SCALE,
            label_noise_ratio=d.DN.LABEL_NOISE_RATIO,
        )
    detr = L(DETR)(
        backbone=backbone,
        transformer=transformer,
        num_classes=d.NUM_CLASSES,
        num_queries=d.NUM_OBJECT_QUERIES,
        in_feature=d.IN_FEATURE,
        aux_loss=d.DEEP_SUPERVISION,
        training_queries=training_queries,
    )
    criterion = L(SetCriterion)(
        num_classes="${..detr.num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=d.COST_CLASS, cost_bbox=d.COST_BBOX, cost_giou=d.COST_GIOU
        ),
        weight_dict=loss_weights(d),
        losses=L(criterion_losses)(has_masks=has_masks, frozen_weights="${...frozen_weights}"),
        num_aux_layers=L(criterion_aux_layers)(
            num_decoder_layers="${...detr.transformer.num_decoder_layers}",
            deep_supervision="${...detr.aux_loss}",
            frozen_weights="${...frozen_weights}",
        ),
        eos_coef=d.NO_OBJECT_WEIGHT,
        focal_alpha=d.FOCAL_ALPHA,
        focal_gamma=d.FOCAL_GAMMA,
        denoising=L(criterion_denoising)(
            dn_copies=d.DN.COPIES, frozen_weights="${...frozen_weights}"
        ),
    )
    is_thing = L(thing_classes)(
        num_classes="${...detr.num_classes}",
        test="${datasets.test}",
        train="${datasets.train}",
        toy="${datasets.toy}",
    )
    postprocessor = L(PanopticPostProcessor)(
        **PanopticPostProcessor.from_config(cfg, is_thing, has_masks)
    )
    mask_head = None
    if has_masks:
        in_features = list(cfg.MODEL.MASK_HEAD.IN_FEATURES)
        missing = [f for f in in_features if f not in r.OUT_FEATURES]
        if missing:
            raise ValueError(
                f"MODEL.MASK_HEAD.IN_FEATURES {missing} are not backbone outputs "
                f"({sorted(r.OUT_FEATURES)})"
            )
        mask_head = L(DetrMaskHead)(
            hidden_dim="${..detr.transformer.d_model}",
            nheads="${..detr.transformer.nhead}",
            in_features=in_features,
            fpn_dims=L(resnet_feature_channels)(
                features="${..in_features}",
                res2_out_channels="${...detr.backbone.res2_out_channels}",
            ),
            scale_attention_maps=cfg.MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS,
        )
    return L(DetrPanoptic)(
        detr=detr,
        criterion=criterion,
        postprocessor=postprocessor,
        mask_head=mask_head,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        frozen_weights=d.FROZEN_WEIGHTS,
        mask_head_weights=cfg.MODEL.MASK_HEAD.WEIGHTS,
        train_matched_only=cfg.MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY,
        test_precision=t.PRECISION,
        weights_name="${train.init_checkpoint}",
    )


def _mapper(cfg, is_train):
    from .data.dataset_mapper import DetrPanopticDatasetMapper

    i = cfg.INPUT
    crop = i.DETR_CROP
    return L(DetrPanopticDatasetMapper)(
        is_train=is_train,
        augmentations=L(detr_augmentations)(
            is_train=is_train,
            min_size=list(i.MIN_SIZE_TRAIN) if is_train else i.MIN_SIZE_TEST,
            max_size=i.MAX_SIZE_TRAIN if is_train else i.MAX_SIZE_TEST,
            sampling=i.MIN_SIZE_TRAIN_SAMPLING,
            random_flip=i.RANDOM_FLIP,
            crop={
                "enabled": crop.ENABLED,
                "prob": crop.PROB,
                "pre_resize": list(crop.PRE_RESIZE),
                "size": list(crop.SIZE),
            },
        ),
        image_format=i.FORMAT,
        num_classes="${model.detr.num_classes}",
        max_pixels=i.MAX_IMAGE_PIXELS,
    )


def _dataloader(cfg):
    from detectron2.data import build_detection_test_loader

    from .data.loader import build_detr_train_loader

    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r}: the LazyConfig twin "
            "knows TrainingSampler"
        )
    train = L(build_detr_train_loader)(
        dataset=L(dataset_dicts)(
            names="${datasets.train}",
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            toy="${datasets.toy}",
        ),
        mapper=_mapper(cfg, True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        prefetch_batches=cfg.DATALOADER.PREFETCH_BATCHES,
        sharing_strategy=cfg.DATALOADER.SHARING_STRATEGY,
        size_grouping_px=cfg.DATALOADER.SIZE_GROUPING_PX,
    )
    test = L(build_detection_test_loader)(
        dataset=L(dataset_dicts)(names="${datasets.test}", toy="${datasets.toy}"),
        mapper=_mapper(cfg, False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    evaluator = L(detr_evaluator)(
        dataset_names="${datasets.test}",
        output_dir="${train.output_dir}",
        num_classes="${model.detr.num_classes}",
        has_masks="${model.postprocessor.has_masks}",
        panoptic_on="${model.postprocessor.panoptic_on}",
        instance_on="${model.postprocessor.instance_on}",
        semantic_on="${model.postprocessor.semantic_on}",
        toy="${datasets.toy}",
    )
    return {"train": train, "test": test, "evaluator": evaluator}


def _optimizer(cfg):
    s = cfg.SOLVER
    clip = s.CLIP_GRADIENTS
    return L(detr_optimizer)(
        params=L(detr_param_groups)(
            model=None, base_lr="${..lr}", backbone_multiplier=s.BACKBONE_MULTIPLIER
        ),
        lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        name=s.OPTIMIZER,
        momentum=s.MOMENTUM,
        clip_gradients={
            "enabled": clip.ENABLED,
            "clip_type": clip.CLIP_TYPE,
            "clip_value": clip.CLIP_VALUE,
            "norm_type": clip.NORM_TYPE,
        },
        impl=s.OPTIMIZER_IMPL,
    )


def _lr_multiplier(cfg):
    s = cfg.SOLVER
    return L(lr_schedule)(
        max_iter="${train.max_iter}",
        name=s.LR_SCHEDULER_NAME,
        steps=list(s.STEPS),
        gamma=s.GAMMA,
        warmup_iters=s.WARMUP_ITERS,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_method=s.WARMUP_METHOD,
        rescale_interval=s.RESCALE_INTERVAL,
        base_lr="${optimizer.lr}",
        base_lr_end=s.BASE_LR_END,
        num_decays=s.NUM_DECAYS,
    )


def _train(cfg):
    from detectron2 import model_zoo

    train = model_zoo.get_config("common/train.py").train
    train.output_dir = cfg.OUTPUT_DIR
    train.init_checkpoint = cfg.MODEL.WEIGHTS
    train.max_iter = cfg.SOLVER.MAX_ITER
    train.eval_period = cfg.TEST.EVAL_PERIOD
    train.checkpointer.period = cfg.SOLVER.CHECKPOINT_PERIOD
    train.checkpointer.max_to_keep = None  # DefaultTrainer's: all are kept
    train.device = cfg.MODEL.DEVICE
    if train.device.startswith("cuda") and not torch.cuda.is_available():
        # as the YAML tools fall back, so that any LazyConfig loop (Detectron2's own included)
        # runs here: said once, when the config is made
        logger.warning(f"train.device {train.device}: CUDA is not available, cpu instead")
        train.device = "cpu"
    train.amp.enabled = cfg.SOLVER.AMP.ENABLED
    train.amp.precision = cfg.SOLVER.AMP.PRECISION
    train.amp.auto = cfg.SOLVER.AMP.AUTO
    train.time_budget_minutes = cfg.SOLVER.TIME_BUDGET_MINUTES
    train.seed = cfg.SEED
    train.cudnn_benchmark = cfg.CUDNN_BENCHMARK
    return train


def _datasets(cfg):
    toy = cfg.DATASETS.TOY
    return {
        "train": list(cfg.DATASETS.TRAIN),
        "test": list(cfg.DATASETS.TEST),
        "toy": {
            "root": toy.ROOT,
            "num_train": toy.NUM_TRAIN,
            "num_val": toy.NUM_VAL,
            "image_size": list(toy.IMAGE_SIZE),
            "thing_colors": toy.THING_COLORS,
        },
    }


def lazy_config_from_yaml(path_or_cfg):
    """The LazyConfig sections (a ``DictConfig`` with ``model``, ``dataloader``, ``optimizer``,
    ``lr_multiplier``, ``train``, ``datasets``) of a YAML config file or a YACS ``CfgNode`` (with
    the plugin's keys): the same model, data, schedule and training options."""
    from omegaconf import DictConfig, OmegaConf

    cfg = path_or_cfg if isinstance(path_or_cfg, CfgNode) else yaml_config(path_or_cfg)
    sections = {
        "model": _model(cfg),
        "dataloader": _dataloader(cfg),
        "optimizer": _optimizer(cfg),
        "lr_multiplier": _lr_multiplier(cfg),
        "train": _train(cfg),
        "datasets": _datasets(cfg),
    }
    return DictConfig(
        {k: OmegaConf.create(v, flags={"allow_objects": True}) for k, v in sections.items()},
        flags={"allow_objects": True},
    )


def yaml_twin(py_file):
    """The YAML file beside a LazyConfig ``.py`` file, of the same name."""
    return os.path.splitext(py_file)[0] + ".yaml"


def lazy_twin(py_file):
    """The LazyConfig sections of the YAML twin of ``py_file`` (what a config under ``configs/``
    holds: ``model, dataloader, ... = lazy_twin(__file__).values()``)."""
    return lazy_config_from_yaml(yaml_twin(py_file))
