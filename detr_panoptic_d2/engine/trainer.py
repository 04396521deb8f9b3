"""Detectron2 ``DefaultTrainer`` for DETR panoptic: data loaders with the DETR mapper, evaluators, optimizer."""
import json
import logging
import os

from detectron2.data import (
    DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators

from ..data.dataset_mapper import DetrPanopticDatasetMapper
from ..data.toy_dataset import register_toy_panoptic_from_cfg
from .optimizer import build_detr_optimizer

logger = logging.getLogger(__name__)


def load_dataset_dicts(names, filter_empty=False):
    """``get_detection_dataset_dicts`` with errors that name the data set and its annotation file."""
    try:
        return get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except (KeyError, ValueError, AssertionError, OSError) as e:
        files = []
        for name in names:
            meta = MetadataCatalog.get(name)
            files.append(f"{name}: {getattr(meta, 'panoptic_json', None) or getattr(meta, 'json_file', '?')}")
        if isinstance(e, KeyError):
            msg = f"unknown category id {e} (not in the data set's metadata)"
        elif isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            msg = f"corrupt annotation JSON ({e})"
        else:
            msg = str(e)
        text = f"cannot load data set {'; '.join(files)}: {msg}"
        try:
            error = type(e)(text)
        except TypeError:  # JSONDecodeError, UnicodeDecodeError, ...: constructors that need more arguments
            error = ValueError(text) if isinstance(e, ValueError) else RuntimeError(text)
        raise error from e


def _create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, also for CPU models: it passes ``device_ids=[local_rank]``, which
    DistributedDataParallel rejects for a module on the CPU (multi-process CPU training with gloo)."""
    if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, **kwargs)


_d2_create_ddp_model = d2_defaults.create_ddp_model


class DetrPanopticTrainer(DefaultTrainer):
    """DefaultTrainer with DETR's data mapper, AdamW + backbone multiplier + full-model gradient clipping,
    and COCO panoptic (plus COCO instance, when an instances JSON is registered) evaluation."""

    def __init__(self, cfg):
        register_toy_panoptic_from_cfg(cfg)
        # DefaultTrainer.__init__ wraps the model with the module-level create_ddp_model of
        # detectron2.engine.defaults; swap in the CPU-aware one for the duration of the call.
        d2_defaults.create_ddp_model = _create_ddp_model
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = _d2_create_ddp_model

    @classmethod
    def build_model(cls, cfg):
        register_toy_panoptic_from_cfg(cfg)  # the model reads the thing/stuff split from the metadata
        return super().build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = load_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        return build_detection_train_loader(cfg, mapper=DetrPanopticDatasetMapper(cfg, True), dataset=dicts)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        register_toy_panoptic_from_cfg(cfg)
        dicts = load_dataset_dicts([dataset_name])
        return build_detection_test_loader(dicts, mapper=DetrPanopticDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        meta = MetadataCatalog.get(dataset_name)
        evaluator_type = getattr(meta, "evaluator_type", None)
        evaluators = []
        if evaluator_type == "coco_panoptic_seg":
            if cfg.MODEL.MASK_HEAD.NAME and cfg.MODEL.DETR.TEST.PANOPTIC_ON:
                evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
            if getattr(meta, "json_file", None) and cfg.MODEL.DETR.TEST.INSTANCE_ON:
                tasks = ("bbox", "segm") if cfg.MODEL.MASK_HEAD.NAME else ("bbox",)
                evaluators.append(COCOEvaluator(dataset_name, tasks, output_dir=output_folder))
        elif evaluator_type == "coco":
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_HEAD.NAME else ("bbox",)
            evaluators.append(COCOEvaluator(dataset_name, tasks, output_dir=output_folder))
        if not evaluators:
            raise NotImplementedError(
                f"no evaluator for data set {dataset_name!r} (evaluator_type={evaluator_type!r}, "
                f"MODEL.MASK_HEAD.NAME={cfg.MODEL.MASK_HEAD.NAME!r}): panoptic evaluation needs a mask head "
                "(stage 2); box evaluation needs an instances JSON (json_file in the metadata)"
            )
        return DatasetEvaluators(evaluators)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_detr_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        register_toy_panoptic_from_cfg(cfg)
        return super().test(cfg, model, evaluators)
