"""Detectron2 ``DefaultTrainer`` for DETR panoptic: data loaders with the DETR mapper, evaluators,
optimizer; on one or several machines, with or without a shared file system."""

import json
import logging
import os
import uuid
import weakref

import torch
import torch.distributed as dist
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, create_ddp_model
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..checkpoint.loading import DetrCheckpointer
from ..data.dataset_mapper import DetrPanopticDatasetMapper
from ..data.loader import cfg_loader_options, group_by_size
from ..solver import lr_schedule
from .amp import build_step_trainer
from .evaluation import build_detr_evaluator
from .optimizer import build_detr_optimizer
from .time_budget import (
    ScalableLRMultiplier,
    StoppableLoop,
    TimeBudget,
    end_following_writers,
)

logger = logging.getLogger(__name__)


def load_dataset_dicts(names, filter_empty=False):
    """``get_detection_dataset_dicts`` with errors that name the data set and its annotation
    file. A KeyError is an unknown category id only where it is one (Detectron2's loaders look
    category ids up in ``_convert_category_id``); otherwise a missing key, named (a field such as
    "segments_info" absent from the annotation file)."""
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
            key = e.args[0] if e.args else None
            tb = e.__traceback__
            while tb.tb_next is not None:  # the frame that raised
                tb = tb.tb_next
            segment = tb.tb_frame.f_locals.get("segment_info")
            if (
                tb.tb_frame.f_code.co_name == "_convert_category_id"
                and isinstance(segment, dict)
                and segment.get("category_id") == key
            ):
                msg = f"unknown category id {key!r} (not in the data set's metadata)"
            elif isinstance(key, str) and " " in key:  # a loader's own message
                msg = key
            else:
                msg = (
                    f"missing key {key!r} (absent from an entry of the annotation file, or from "
                    "the metadata)"
                )
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


def machines_share_output_dir(output_dir):
    """Whether every process sees the files the main process writes into ``output_dir``: True on
    one machine; on several, found out by the main process writing a file of a new name that each
    process looks for (False: each machine has its own ``OUTPUT_DIR``, e.g. on a local disk)."""
    if comm.get_local_size() == comm.get_world_size():
        return True
    name = comm.all_gather(uuid.uuid4().hex)[0]  # the main process's
    path = os.path.join(output_dir, f".shared_output_dir_{name}")
    if comm.is_main_process():
        PathManager.mkdirs(output_dir)
        with PathManager.open(path, "w") as f:
            f.write(name)
    comm.synchronize()
    shared = all(comm.all_gather(PathManager.exists(path)))
    comm.synchronize()
    if comm.is_main_process():
        PathManager.rm(path)
    return shared


def tracking_norms(model):
    """The BatchNorm layers of ``model`` that track running statistics (none with FrozenBN, the
    COCO recipes' backbone norm)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


class SyncNormStatistics(HookBase):
    """Average the BatchNorm running statistics over the processes after each step, so that every
    process holds the same model: DDP averages the gradients only, and each process's BatchNorm
    layers track the statistics of its own batches (buffers are not broadcast). Without it, the
    processes would evaluate, and the machines that keep their own checkpoints save, models that
    differ in those statistics (the toy recipe's trainable "BN" backbone). Layers in eval mode
    (a frozen stage-1 body) keep theirs."""

    def __init__(self, norms):
        self.norms = norms

    def after_step(self):
        buffers = [
            b for m in self.norms if m.training for b in (m.running_mean, m.running_var)
        ]  # the same on every process: all are in the same mode
        if not buffers:
            return
        with torch.no_grad():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.all_reduce(flat)
            flat /= comm.get_world_size()
            offset = 0
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def create_detr_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model`` (the model itself on one process), also for a model on the
    CPU (multi-process CPU training with gloo): there no ``device_ids``, which DDP rejects for CPU
    modules and Detectron2 would set to the local rank.

    ``find_unused_parameters`` stays False (DDP's default, no extra graph traversal per step):
    every trainable parameter gets a gradient in every iteration, also with query groups and
    denoising queries (padding slots use the label embedding's "unknown" row when an image has no
    target) and in stage 2 with masks for the matched queries only (the mask head runs on zero
    rows when a batch has no target). tests/engine/test_ddp.py trains those cases on two
    processes, where a parameter without gradient would be an error."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def build_detr_checkpointer(model, output_dir, trainer):
    """The plugin's checkpointer of ``model`` and ``trainer``'s state in ``output_dir``: written by
    the main process where the machines share ``output_dir`` (as in Detectron2), else by the first
    process of each machine (:func:`machines_share_output_dir`)."""
    shared = machines_share_output_dir(output_dir)
    return DetrCheckpointer(
        model,
        output_dir,
        save_to_disk=comm.is_main_process() if shared else comm.get_local_rank() == 0,
        trainer=weakref.proxy(trainer),
    )


def detr_training_hooks(
    model,
    checkpointer,
    checkpoint_period,
    time_budget_minutes,
    milestones,
    max_iter,
    followers=(),
):
    """What both config worlds add to Detectron2's training hooks, as ``(first, before_eval)``:
    ``first`` go before all others (the time budget, :class:`TimeBudget`, whose new end the lr
    scheduler and the checkpointer see in the same step; averaging BatchNorm statistics across
    processes, :class:`SyncNormStatistics`); ``before_eval`` go before the evaluation
    (the checkpointer of a machine that keeps its own checkpoints, where Detectron2 gives the main
    process alone one). ``followers``: what the time budget sets the new end of (the lr
    scheduler, Detectron2's ``PeriodicCheckpointer`` hooks), ``before_eval``'s checkpointer too."""
    first, before_eval = [], []
    if checkpointer.save_to_disk and not comm.is_main_process():
        before_eval.append(d2_hooks.PeriodicCheckpointer(checkpointer, checkpoint_period))
    if time_budget_minutes > 0:
        first_drop = min(milestones) / max_iter if milestones else None
        budget = TimeBudget(
            time_budget_minutes * 60, first_drop, followers=[*followers, *before_eval]
        )
        first.append(budget)
    norms = tracking_norms(model)
    if comm.get_world_size() > 1 and norms:
        first.append(SyncNormStatistics(norms))
    return first, before_eval


def solver_lr_multiplier(cfg):
    """The lr multiplier (a fvcore ``ParamScheduler`` of the fraction of training done) that
    Detectron2's ``build_lr_scheduler`` makes of ``cfg.SOLVER``: LazyConfig's
    :func:`~detr_panoptic_d2.solver.lr_schedule` of the same keys."""
    s = cfg.SOLVER
    return lr_schedule(
        max_iter=s.MAX_ITER,
        name=s.LR_SCHEDULER_NAME,
        steps=s.STEPS,
        gamma=s.GAMMA,
        warmup_iters=s.WARMUP_ITERS,
        warmup_factor=s.WARMUP_FACTOR,
        warmup_method=s.WARMUP_METHOD,
        rescale_interval=s.RESCALE_INTERVAL,
        base_lr=s.BASE_LR,
        base_lr_end=s.BASE_LR_END,
        num_decays=s.NUM_DECAYS,
    )


def end_distributed_run():
    """At the end of a run on several processes: wait for all of them (the main one evaluates
    last), then destroy the process group, so that no process exits while the group's threads
    still run. A no-op on one process."""
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def check_same_start(start_iter, output_dir):
    """On several processes, an error (in each) unless all resume from the same iteration: a
    machine without the checkpoints would otherwise train from iteration 0 while the others
    resume."""
    starts = comm.all_gather(start_iter)
    if len(set(starts)) > 1:
        raise RuntimeError(
            f"--resume: the processes would start at different iterations {starts} (by rank): "
            f"the checkpoints of {output_dir} (last_checkpoint) differ between the "
            "machines, or are missing on some. Give each machine the same checkpoints."
        )


class DetrPanopticTrainer(DefaultTrainer, StoppableLoop):
    """DefaultTrainer with DETR's data mapper, AdamW + backbone multiplier + full-model gradient
    clipping, the plugin's checkpointer, and the evaluators of :func:`build_detr_evaluator` (PQ, AP
    of things, mIoU). Register the data sets before building it (``register_datasets_from_cfg``).

    On several processes, BatchNorm statistics are averaged after each step
    (:class:`SyncNormStatistics`), so that all hold the same model. On several machines that do
    not share ``OUTPUT_DIR`` (:func:`machines_share_output_dir`), the first process of each
    machine writes the checkpoints into its own, so that each machine has what a later stage
    (``MODEL.DETR.FROZEN_WEIGHTS``), ``--eval-only`` or ``--resume`` reads; with a shared one, the
    main process alone writes them, as in Detectron2. ``--resume`` is an error when the processes
    would resume from different iterations (checkpoints missing on a machine). With
    ``SOLVER.TIME_BUDGET_MINUTES``, Detectron2's ``train`` ends where :class:`TimeBudget` puts the
    end (:class:`StoppableLoop`).
    """

    def __init__(self, cfg):
        """What ``DefaultTrainer.__init__`` builds, from the same ``build_*`` classmethods and in
        the same order, but for the three pieces it builds without an extension point: the DDP
        wrapper (:func:`create_detr_ddp_model`; Detectron2's gives a model on the CPU the local
        rank as device id, which DDP rejects), the per-step trainer (:func:`build_step_trainer`,
        AMP on the CPU too; Detectron2's ``AMPTrainer`` requires CUDA) and the checkpointer
        (:func:`build_detr_checkpointer`)."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_detr_ddp_model(model, broadcast_buffers=False)
        # DefaultTrainer's place for the per-step trainer (its run_step and state_dict use it)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_detr_checkpointer(model, cfg.OUTPUT_DIR, self)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hooks = super().build_hooks()
        solver = self.cfg.SOLVER
        checkpointers = [h for h in hooks if isinstance(h, d2_hooks.PeriodicCheckpointer)]
        first, before_eval = detr_training_hooks(
            self.model,
            self.checkpointer,
            solver.CHECKPOINT_PERIOD,
            solver.TIME_BUDGET_MINUTES,
            solver.STEPS,
            solver.MAX_ITER,
            followers=[self.scheduler, *checkpointers],
        )
        at = next(i for i, h in enumerate(hooks) if isinstance(h, d2_hooks.EvalHook))
        return first + hooks[:at] + before_eval + hooks[at:]

    def build_writers(self):
        """Detectron2's writers, the metric printer's ETA counting to the trainer's end
        (:class:`EndFollowingPrinter`)."""
        return end_following_writers(super().build_writers(), self)

    def resume_or_load(self, resume=True):
        """DefaultTrainer.resume_or_load; on several processes all must start at the same
        iteration (:func:`check_same_start`)."""
        super().resume_or_load(resume=resume)
        check_same_start(self.start_iter, self.cfg.OUTPUT_DIR)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's lr schedule of ``cfg.SOLVER`` as a :class:`ScalableLRMultiplier`, whose
        length a :class:`TimeBudget` sets."""
        return ScalableLRMultiplier(optimizer, solver_lr_multiplier(cfg), cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = load_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        loader = build_detection_train_loader(
            cfg,
            mapper=DetrPanopticDatasetMapper(cfg, True),
            dataset=dicts,
            **cfg_loader_options(cfg),
        )
        return group_by_size(loader, cfg.DATALOADER.SIZE_GROUPING_PX)

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
