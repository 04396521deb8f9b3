"""Detectron2 ``DefaultTrainer`` for DETR panoptic: data loaders with the DETR mapper, evaluators,
optimizer."""

import json
import logging
import os
import weakref

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.loading import DetrCheckpointer
from ..data.dataset_mapper import DetrPanopticDatasetMapper
from .amp import build_step_trainer
from .evaluation import build_detr_evaluator
from .optimizer import build_detr_optimizer
from .time_budget import TimeBudget, run_training_loop

logger = logging.getLogger(__name__)


def load_dataset_dicts(names, filter_empty=False):
    """``get_detection_dataset_dicts`` with errors that name the data set and its annotation
    file."""
    try:
        return get_detection_dataset_dicts(names, filter_empty=filter_empty)
    except (KeyError, ValueError, AssertionError, OSError) as e:
        files = []
        for name in names:
            meta = MetadataCatalog.get(name)
            files.append(
                f"{name}: {getattr(meta, 'panoptic_json', None) or getattr(meta, 'json_file', '?')}"
            )
        if isinstance(e, KeyError):
            msg = f"unknown category id {e} (not in the data set's metadata)"
        elif isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)):
            msg = f"corrupt annotation JSON ({e})"
        else:
            msg = str(e)
        text = f"cannot load data set {'; '.join(files)}: {msg}"
        try:
            error = type(e)(text)
        except (
            TypeError
        ):  # JSONDecodeError, UnicodeDecodeError, ...: constructors that need more arguments
            error = ValueError(text) if isinstance(e, ValueError) else RuntimeError(text)
        raise error from e


class DetrPanopticTrainer(DefaultTrainer):
    """DefaultTrainer with DETR's data mapper, AdamW + backbone multiplier + full-model gradient
    clipping, the plugin's checkpointer, and the evaluators of :func:`build_detr_evaluator` (PQ, AP
    of things, mIoU). Register the data sets before building it (``register_datasets_from_cfg``)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, except that the model is wrapped in DistributedDataParallel
        # without device_ids when it lies on the CPU (multi-process CPU training with gloo:
        # Detectron2's create_ddp_model passes the local rank as a device id, which DDP rejects for
        # CPU modules), and that checkpoints go through DetrCheckpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        model = create_ddp_model(
            model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {})
        )
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)  # AMP on CPU too
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetrCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.SOLVER.TIME_BUDGET_MINUTES > 0:
            # first: the lr scheduler and the checkpointer see a new end in the same step
            solver = self.cfg.SOLVER
            first_drop = min(solver.STEPS) / solver.MAX_ITER if solver.STEPS else None
            hooks.insert(0, TimeBudget(solver.TIME_BUDGET_MINUTES * 60, first_drop))
        return hooks

    def train(self):
        """DefaultTrainer.train; with SOLVER.TIME_BUDGET_MINUTES the loop ends where
        :class:`TimeBudget` puts the end."""
        if self.cfg.SOLVER.TIME_BUDGET_MINUTES <= 0:
            return super().train()
        run_training_loop(self, self.start_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            verify_results(self.cfg, self._last_eval_results)
            return self._last_eval_results

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = load_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        return build_detection_train_loader(
            cfg, mapper=DetrPanopticDatasetMapper(cfg, True), dataset=dicts
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        dicts = load_dataset_dicts([dataset_name])
        return build_detection_test_loader(dicts, mapper=DetrPanopticDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_detr_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_detr_optimizer(cfg, model)
