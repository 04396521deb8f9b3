"""Host syncs on the hot paths: a training step and an inference call make a small constant number
of them, whatever the number of queries and images.

A host sync (the host waiting for the device to finish, to read a value back) is counted on the CPU
by patching the calls that cause one on a GPU: ``Tensor.item``, ``.tolist``, ``.cpu``, ``.nonzero``
and ``torch.nonzero``, ``bool()`` / ``int()`` / ``float()`` / ``__index__`` of a tensor, and
indexing with a boolean tensor (a ``nonzero`` inside). Each test runs two sizes (queries and images
doubled) and requires the same counts.

What remains, per iteration: the Hungarian matcher's one copy to the host of the costs of every
supervised layer and query group (``scipy`` runs on the host), the non-finite check of the outputs,
the metrics for the event storage (one copy for all of them) and, with a mask head, its per-image
row counts (one copy). At inference, the model (without the
post-processing, which makes the final per-image outputs on the host) makes 3 for the whole batch.
"""

import collections
import contextlib
import traceback
from unittest import mock

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input
from torch.overrides import TorchFunctionMode

from detr_panoptic_d2.modeling.targets import targets_from_instances

SYNC_METHODS = ("item", "tolist", "cpu", "nonzero", "__bool__", "__int__", "__float__", "__index__")
SIZES = [(10, 2), (20, 4)]  # (queries, images)


def _site():
    """The innermost frame of the package (or of Detectron2 / torchvision) that made the call."""
    for f in reversed(traceback.extract_stack()[:-3]):
        if any(p in f.filename for p in ("/detr_panoptic", "/detectron2/", "/torchvision/")):
            return f"{f.filename.rsplit('/', 1)[-1]}:{f.name}"
    return "?"


class SyncCounter:
    """Counts host syncs by (kind, site) while ``enabled``. Calls made from
    :func:`targets_from_instances` are not counted: it filters the data loader's instances where
    they are, on the host, before copying them to the device (on a GPU they are no syncs;
    ``test_targets_filter_on_the_host_and_move_only_what_is_read`` checks that)."""

    def __init__(self):
        self.calls = collections.Counter()
        self.enabled = True

    def hit(self, kind):
        if not self.enabled:
            return
        site = _site()
        if site.startswith("targets.py:"):
            return
        self.calls[(kind, site)] += 1

    @contextlib.contextmanager
    def paused(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def kinds(self):
        out = collections.Counter()
        for (kind, _), n in self.calls.items():
            out[kind] += n
        return out


SYNC_FUNCS = {getattr(torch.Tensor, n): n for n in SYNC_METHODS}
SYNC_FUNCS[torch.nonzero] = "nonzero"


def _has_bool_index(index):
    index = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


class _SyncMode(TorchFunctionMode):
    """Sees every tensor method and torch function called from Python (a torch-function mode:
    patching ``torch.Tensor``'s slots instead would leave the class changed after unpatching)."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = SYNC_FUNCS.get(func)
        if kind is not None:
            self.counter.hit(kind)
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _has_bool_index(
            args[1]
        ):
            self.counter.hit("bool-index")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_syncs():
    counter = SyncCounter()
    with _SyncMode(counter):
        yield counter


def _batch(images):
    return [make_input(64, 96, 3 - i % 3, seed=i) for i in range(images)]


def _train_syncs(model, batch):
    with EventStorage():
        with count_syncs() as counter:
            losses = model(batch)
            sum(losses.values()).backward()
    return counter


def test_stage1_step_syncs_do_not_grow_with_queries_or_images():
    counts = []
    for queries, images in SIZES:
        model = build_tiny_model(
            **{
                "MODEL.DETR.NUM_OBJECT_QUERIES": queries,
                "MODEL.DETR.GROUPS": 2,
                "MODEL.DETR.DN.COPIES": 2,
            }
        ).train()
        counts.append(_train_syncs(model, _batch(images)))
    assert counts[0].calls == counts[1].calls, (counts[0].calls, counts[1].calls)
    kinds = counts[0].kinds()
    # one cost copy for every supervised layer (last + 1 auxiliary) and query group (DETR's + 1)
    assert kinds["cpu"] == 1
    assert sum(kinds.values()) <= 4, counts[0].calls


def test_stage1_step_syncs_per_layer_without_the_batched_criterion():
    """MODEL.DETR.BATCHED_CRITERION False (DETR's criterion): one matcher call, so one cost copy,
    per layer and query group."""
    model = build_tiny_model(
        **{
            "MODEL.DETR.GROUPS": 2,
            "MODEL.DETR.DN.COPIES": 2,
            "MODEL.DETR.BATCHED_CRITERION": False,
        }
    ).train()
    assert _train_syncs(model, _batch(2)).kinds()["cpu"] == 4


@pytest.mark.parametrize("matched_only", [True, False])
def test_stage2_step_syncs_do_not_grow_with_queries_or_images(tmp_path, matched_only):
    counts = []
    for queries, images in SIZES:
        opts = {"MODEL.DETR.NUM_OBJECT_QUERIES": queries}
        path = tmp_path / f"stage1_{queries}.pth"
        torch.save({"model": build_tiny_model(**opts).state_dict()}, path)
        model = build_tiny_model(
            mask_head=True,
            seed=1,
            **opts,
            **{
                "MODEL.DETR.FROZEN_WEIGHTS": str(path),
                "MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY": matched_only,
            },
        ).train()
        counts.append(_train_syncs(model, _batch(images)))
    assert counts[0].calls == counts[1].calls, (counts[0].calls, counts[1].calls)
    kinds = counts[0].kinds()
    assert kinds["cpu"] == 1  # the last layer's matching only (the detector is frozen)
    assert kinds["nonzero"] == 0  # no per-image row selection in the mask head
    assert sum(kinds.values()) <= 5, counts[0].calls


def test_inference_syncs_do_not_grow_with_queries_or_images():
    """The model's part of inference (the post-processing, which builds the final outputs on the
    host image by image, is not counted) makes the same few syncs for any batch."""
    counts = []
    for queries, images in SIZES:
        model = build_tiny_model(
            mask_head=True,
            **{
                "MODEL.DETR.NUM_OBJECT_QUERIES": queries,
                "MODEL.DETR.TEST.SEMANTIC_ON": True,
                "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD": 0.0,
            },
        ).eval()
        post = model.postprocessor.forward
        batch = _batch(images)
        with count_syncs() as counter:

            def post_uncounted(*args, counter=counter, post=post):
                with counter.paused():
                    return post(*args)

            with mock.patch.object(model.postprocessor, "forward", post_uncounted):
                results = model(batch)
        assert len(results) == images
        counts.append(counter)
    assert counts[0].calls == counts[1].calls, (counts[0].calls, counts[1].calls)
    # the mask rows of the batch (nonzero), their per-image split, the mask head's row counts
    assert sum(counts[0].kinds().values()) == 3, counts[0].calls


class _Untouchable:
    """A mask field that fails when moved or indexed: stage 1 must not touch the masks."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def to(self, *args, **kwargs):
        raise AssertionError("stage 1 moved gt_masks")

    def __getitem__(self, item):
        raise AssertionError("stage 1 indexed gt_masks")


def test_targets_filter_on_the_host_and_move_only_what_is_read():
    """The instances are filtered where the data loader put them (the CPU) and only then copied:
    with the images on ``meta``, a filter on the device would fail (``nonzero`` has no meta
    kernel). Stage 1 leaves the masks alone."""
    x = make_input(64, 96, 3)
    inst = x["instances"]
    inst.gt_boxes = Boxes(torch.cat([inst.gt_boxes.tensor[:2], torch.tensor([[5.0, 5, 5, 9]])]))
    cpu_images = type("Images", (), {})()
    cpu_images.tensor, cpu_images.image_sizes = torch.zeros(1, 3, 64, 96), [(64, 96)]
    meta_images = type("Images", (), {})()
    meta_images.tensor, meta_images.image_sizes = cpu_images.tensor.to("meta"), [(64, 96)]

    (ref,) = targets_from_instances([x], cpu_images, with_masks=True)
    (got,) = targets_from_instances([x], meta_images, with_masks=True)
    assert len(ref["labels"]) == 2  # the degenerate box is dropped
    for k in ("labels", "boxes", "masks"):
        assert got[k].device.type == "meta" and got[k].shape == ref[k].shape, k

    stage1 = Instances((64, 96), gt_boxes=inst.gt_boxes, gt_classes=inst.gt_classes)
    stage1.gt_masks = _Untouchable(3)
    (t,) = targets_from_instances([{"instances": stage1}], meta_images, with_masks=False)
    assert set(t) == {"labels", "boxes"} and t["boxes"].device.type == "meta"
    assert isinstance(x["instances"].gt_masks, BitMasks)
