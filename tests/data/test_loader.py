"""The training loader (data/loader.py): prefetch depth and tensor sharing strategy change how
batches travel from the workers, never which batches arrive; size grouping changes which images
share a batch, never which images arrive or how they are mapped."""

import collections

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data.loader import (
    SizeGroupedDataset,
    build_detr_train_loader,
    cfg_loader_options,
    group_by_size,
    loader_options,
)


class _Record:
    """A picklable mapper: an image-like record of 4 tensors, as the panoptic mapper returns."""

    def __call__(self, d):
        i = d["i"]
        g = torch.Generator().manual_seed(i)
        h, w = (16, 24) if i % 3 else (24, 16)  # two aspect-ratio groups
        return {
            "i": i,
            "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "masks": torch.rand(2, h, w, generator=g) > 0.5,
            "boxes": torch.rand(2, 4, generator=g),
            "classes": torch.tensor([i % 5, (i + 1) % 5]),
            "width": w,
            "height": h,
        }


@pytest.fixture
def restore_strategy():
    before = mp.get_sharing_strategy()
    yield
    mp.set_sharing_strategy(before)


def test_loader_options():
    assert loader_options(0, 8) == {}  # no workers: nothing travels
    assert loader_options(1, 8, 2, "") == {"prefetch_factor": 16}
    assert loader_options(4, 2, 2, "") == {"prefetch_factor": 2}  # never below torch's 2
    assert loader_options(3, 8, 1, "") == {"prefetch_factor": 3}
    assert loader_options(2, 8, 0, "") == {}  # torch's default
    with pytest.raises(ValueError, match="DATALOADER.PREFETCH_BATCHES"):
        loader_options(1, 8, -1, "")
    with pytest.raises(ValueError, match="DATALOADER.SHARING_STRATEGY 'shm'"):
        loader_options(1, 8, 2, "shm")


def test_config_keys_checked_and_applied(restore_strategy):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.SOLVER.IMS_PER_BATCH = 8
    mp.set_sharing_strategy("file_descriptor")
    assert cfg_loader_options(cfg) == {"prefetch_factor": 8}
    assert mp.get_sharing_strategy() == "file_system"
    cfg.DATALOADER.SHARING_STRATEGY = "files"
    with pytest.raises(ValueError, match="DATALOADER.SHARING_STRATEGY 'files'"):
        cfg_loader_options(cfg)  # the loader checks the keys it owns
    cfg.DATALOADER.SHARING_STRATEGY = ""
    cfg.DATALOADER.PREFETCH_BATCHES = -2
    with pytest.raises(ValueError, match="DATALOADER.PREFETCH_BATCHES"):
        cfg_loader_options(cfg)


def _batches(n, mapper=None, records=12, **kw):
    """The first ``n`` batches of 4 of the plugin's training loader over ``records`` records in
    order (2 workers, aspect-ratio grouping), mapped by ``mapper`` (default :class:`_Record`)."""
    loader = build_detr_train_loader(
        dataset=[{"i": i} for i in range(records)],
        mapper=mapper or _Record(),
        sampler=TrainingSampler(records, shuffle=False),
        total_batch_size=4,
        aspect_ratio_grouping=True,
        num_workers=2,
        **kw,
    )
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_same_batches_whatever_the_transport(restore_strategy):
    """file_system sharing with deep prefetch against torch's defaults (file descriptors, 2 images
    per worker): the same records, in the same batches, bit-identical tensors."""
    plain = _batches(6, prefetch_batches=0, sharing_strategy="file_descriptor")
    fast = _batches(6, prefetch_batches=2, sharing_strategy="file_system")
    assert [[d["i"] for d in b] for b in plain] == [[d["i"] for d in b] for b in fast]
    for bp, bf in zip(plain, fast):
        for dp, df in zip(bp, bf):
            for key in ("image", "masks", "boxes", "classes"):
                assert torch.equal(dp[key], df[key])
    # aspect-ratio grouping held: each batch is of one orientation
    for b in fast:
        assert len({d["width"] > d["height"] for d in b}) == 1


class _Scaled:
    """A picklable mapper as a multi-scale resize makes it: record i's short side is one of
    96, 112, 128 (drawn from i), its long side 1.2-1.6x that, its orientation from i."""

    def __call__(self, d):
        i = d["i"]
        g = torch.Generator().manual_seed(1000 + i)
        short = (96, 112, 128)[int(torch.randint(0, 3, (1,), generator=g))]
        long = int(short * (1.2 + 0.4 * float(torch.rand(1, generator=g))))
        h, w = (short, long) if i % 4 else (long, short)
        return {"i": i, "image": torch.zeros(3, h, w, dtype=torch.uint8), "width": w, "height": h}


def _padded_pixels(batch):
    """Pixels of the batch's padded tensor (ImageList pads to the largest height and width)."""
    return max(d["image"].shape[1] for d in batch) * max(d["image"].shape[2] for d in batch)


def test_size_grouping_batches_one_short_side_bucket():
    records = [_Scaled()({"i": i}) for i in range(200)]
    batches = list(SizeGroupedDataset(records, 4, 16))
    for b in batches:
        assert len(b) == 4
        assert len({d["width"] > d["height"] for d in b}) == 1  # Detectron2's grouping kept
        assert len({min(d["image"].shape[1:]) // 16 for d in b}) == 1
    # every record in at most one batch; the ones held back are fewer than a batch per bucket
    seen = [d["i"] for b in batches for d in b]
    assert len(seen) == len(set(seen))
    held = collections.Counter(
        (d["width"] > d["height"], min(d["height"], d["width"]) // 16)
        for d in records
        if d["i"] not in set(seen)
    )
    assert all(n < 4 for n in held.values()), held
    # the point of it: less padding than Detectron2's aspect-ratio grouping of the same stream
    plain = list(AspectRatioGroupedDataset(records, 4))
    grouped_px = sum(map(_padded_pixels, batches)) / len(batches)
    plain_px = sum(map(_padded_pixels, plain)) / len(plain)
    assert grouped_px < 0.9 * plain_px, (grouped_px, plain_px)


def test_group_by_size_replaces_aspect_ratio_grouping_only():
    records = [_Scaled()({"i": i}) for i in range(8)]
    plain = AspectRatioGroupedDataset(records, 2)
    grouped = group_by_size(plain, 16)
    assert isinstance(grouped, SizeGroupedDataset)
    assert grouped.dataset is records and grouped.batch_size == 2 and grouped.step == 16
    assert group_by_size(plain, 0) is plain  # off
    ungrouped = [records[:2], records[2:4]]  # DATALOADER.ASPECT_RATIO_GROUPING False
    assert group_by_size(ungrouped, 16) is ungrouped
    with pytest.raises(ValueError, match="DATALOADER.SIZE_GROUPING_PX -1"):
        group_by_size(plain, -1)


def test_size_grouped_loader_maps_the_same_images():
    """Through the workers: with size grouping the images that arrive are those of Detectron2's
    aspect-ratio grouping, mapped alike, only batched by short side."""
    grouped = _batches(20, _Scaled(), 48, size_grouping_px=16)
    plain = _batches(20, _Scaled(), 48)  # off by default: Detectron2's grouping
    by_i = {d["i"]: d for b in plain for d in b}
    for b in grouped:
        assert len({min(d["image"].shape[1:]) // 16 for d in b}) == 1
        for d in b:
            if d["i"] in by_i:
                assert torch.equal(d["image"], by_i[d["i"]]["image"])
