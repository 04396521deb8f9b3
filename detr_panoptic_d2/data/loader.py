"""How training batches travel from the data-loading workers to the training process.

Detectron2's training loader (with aspect-ratio grouping) has its workers map single images and
batches them in the training process, through a ``torch.utils.data.DataLoader`` at torch's
defaults: each worker keeps 2 images ready, and each tensor of an image (the image, masks, boxes,
classes) travels as a file descriptor, one socket handshake per tensor (~1.5 ms on a 2-core CPU).
A step shorter than a batch's mapping then waits for data: on the toy recipe (8 images of 4
tensors each, a ~0.3 s step) that was ~60 ms per iteration, almost all of it spent receiving.

Two options, ``DATALOADER.PREFETCH_BATCHES`` and ``DATALOADER.SHARING_STRATEGY``, change only the
transport: the same images in the same order (``tests/data/test_loader.py``).

A third, ``DATALOADER.SIZE_GROUPING_PX``, changes which images share a batch. A batch is padded to
its largest image, and with multi-scale training each image draws its own scale: on the toy recipe
(short side 96, 112 or 128) almost every batch of 8 holds a 128 px image, so every step ran at the
largest size, 1.3x the pixels of the average one. :class:`SizeGroupedDataset` batches together
images of one orientation whose augmented short sides fall in the same bucket, so a batch is padded
to about its own images' size. Each image still draws its scale as before; only the batches are
formed differently. It is off by default (0): on the toy recipe the faster step came with a lower
PQ at equal iterations (docs/performance.md).
"""

import math

import torch.multiprocessing as mp
from detectron2.data import build_detection_train_loader
from detectron2.data.common import AspectRatioGroupedDataset
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


class SizeGroupedDataset(AspectRatioGroupedDataset):
    """Detectron2's aspect-ratio grouping made finer: a batch holds images of one orientation
    (width > height or not) whose short sides, as mapped (``d["image"]``: C, H, W), fall in the
    same ``step``-pixel bucket (short side // step). Batches are yielded as their buckets fill, so
    at most (batch_size - 1) images wait in each bucket."""

    def __init__(self, dataset, batch_size, step):
        super().__init__(dataset, batch_size)
        if step <= 0:
            raise ValueError(f"DATALOADER.SIZE_GROUPING_PX {step}: must be > 0 here (0: off)")
        self.step = step
        self.buckets = {}

    def bucket_of(self, d):
        """(orientation, short-side bucket) of the mapped record ``d``."""
        h, w = d["image"].shape[-2:]
        return (w > h, min(h, w) // self.step)

    def __iter__(self):
        for d in self.dataset:
            bucket = self.buckets.setdefault(self.bucket_of(d), [])
            bucket.append(d)
            if len(bucket) == self.batch_size:
                data = bucket[:]
                del bucket[:]  # emptied before the yield, as Detectron2's grouping does
                yield data


def group_by_size(loader, size_grouping_px):
    """``loader`` (Detectron2's training loader) with its aspect-ratio grouping replaced by
    :class:`SizeGroupedDataset` when ``size_grouping_px`` > 0; unchanged when it is 0 or the loader
    does not group (``DATALOADER.ASPECT_RATIO_GROUPING`` False)."""
    if size_grouping_px < 0:
        raise ValueError(f"DATALOADER.SIZE_GROUPING_PX {size_grouping_px}: must be >= 0 (0: off)")
    if not size_grouping_px or type(loader) is not AspectRatioGroupedDataset:
        return loader
    return SizeGroupedDataset(loader.dataset, loader.batch_size, size_grouping_px)


def cfg_loader_options(cfg):
    """:func:`loader_options` of a YACS config (``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH`` over
    the processes)."""
    d = cfg.DATALOADER
    per_process = max(1, cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
    return loader_options(d.NUM_WORKERS, per_process, d.PREFETCH_BATCHES, d.SHARING_STRATEGY)


def build_detr_train_loader(
    *,
    total_batch_size,
    num_workers=0,
    prefetch_batches=2,
    sharing_strategy="file_system",
    size_grouping_px=0,
    **kw,
):
    """Detectron2's ``build_detection_train_loader`` (explicit arguments, ``**kw`` passed on)
    with :func:`loader_options` and :func:`group_by_size`: the LazyConfig world's training
    loader."""
    per_process = max(1, total_batch_size // comm.get_world_size())
    options = loader_options(num_workers, per_process, prefetch_batches, sharing_strategy)
    loader = build_detection_train_loader(
        total_batch_size=total_batch_size, num_workers=num_workers, **kw, **options
    )
    return group_by_size(loader, size_grouping_px)
