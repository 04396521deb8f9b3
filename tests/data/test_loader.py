"""The training loader's transport (data/loader.py): prefetch depth and tensor sharing strategy
change how batches travel from the workers, never which batches arrive."""

import pytest
import torch
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.data.samplers import TrainingSampler

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data.loader import build_detr_train_loader, cfg_loader_options, loader_options


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


def _batches(n, **kw):
    loader = build_detr_train_loader(
        dataset=[{"i": i} for i in range(12)],
        mapper=_Record(),
        sampler=TrainingSampler(12, shuffle=False),
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
