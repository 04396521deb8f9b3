"""How training batches travel from the data-loading workers to the training process.

Detectron2's training loader (with aspect-ratio grouping) has its workers map single images and
batches them in the training process, through a ``torch.utils.data.DataLoader`` at torch's
defaults: each worker keeps 2 images ready, and each tensor of an image (the image, masks, boxes,
classes) travels as a file descriptor, one socket handshake per tensor (~1.5 ms on a 2-core CPU).
A step shorter than a batch's mapping then waits for data: on the toy recipe (8 images of 4
tensors each, a ~0.3 s step) that was ~60 ms per iteration, almost all of it spent receiving.

Two options, ``DATALOADER.PREFETCH_BATCHES`` and ``DATALOADER.SHARING_STRATEGY``, change only the
transport: the same images in the same order (``tests/data/test_loader.py``).
"""

import math

import torch.multiprocessing as mp
from detectron2.data import build_detection_train_loader
from detectron2.utils import comm


def check_sharing_strategy(strategy, key="DATALOADER.SHARING_STRATEGY"):
    """A ``ValueError`` naming ``key`` unless ``strategy`` is "" (torch's default) or one of
    ``torch.multiprocessing.get_all_sharing_strategies()``."""
    known = sorted(mp.get_all_sharing_strategies())
    if strategy and strategy not in known:
        raise ValueError(f"{key} {strategy!r}: must be '' (torch's default) or one of {known}")


def loader_options(num_workers, batch_size, prefetch_batches=2, sharing_strategy="file_system"):
    """Keyword arguments for the ``DataLoader`` of a training loader with ``num_workers`` workers
    and ``batch_size`` images per process, and the process's tensor sharing strategy set.

    * ``prefetch_batches``: the workers together keep this many batches mapped ahead
      (``prefetch_factor`` = that many images per worker, at least torch's 2; 0: torch's
      default);
    * ``sharing_strategy``: ``torch.multiprocessing.set_sharing_strategy`` ("file_system": one
      shared-memory file per tensor, no handshake; "": left as it is). It is process-wide, and
      takes effect for workers started after it is set.
    """
    check_sharing_strategy(sharing_strategy)
    if prefetch_batches < 0:
        raise ValueError(f"DATALOADER.PREFETCH_BATCHES {prefetch_batches}: must be >= 0")
    if num_workers <= 0:
        return {}  # the training process maps the images itself: nothing travels
    if sharing_strategy:
        mp.set_sharing_strategy(sharing_strategy)
    if not prefetch_batches:
        return {}
    return {"prefetch_factor": max(2, math.ceil(prefetch_batches * batch_size / num_workers))}


def cfg_loader_options(cfg):
    """:func:`loader_options` of a YACS config (``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH`` over
    the processes)."""
    d = cfg.DATALOADER
    per_process = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
    return loader_options(d.NUM_WORKERS, per_process, d.PREFETCH_BATCHES, d.SHARING_STRATEGY)


def build_detr_train_loader(
    *, total_batch_size, num_workers=0, prefetch_batches=2, sharing_strategy="file_system", **kw
):
    """Detectron2's ``build_detection_train_loader`` (explicit arguments, ``**kw`` passed on)
    with :func:`loader_options`: the LazyConfig world's training loader."""
    per_process = max(1, total_batch_size // comm.get_world_size())
    options = loader_options(num_workers, per_process, prefetch_batches, sharing_strategy)
    return build_detection_train_loader(
        total_batch_size=total_batch_size, num_workers=num_workers, **kw, **options
    )
