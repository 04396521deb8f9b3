"""detr_instances resizes the binarized masks to the output size as bool, a few at a time: the same
masks bit for bit as DETR's float nearest interpolation of every mask at once."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances

from detr_panoptic_d2.modeling.box_ops import cxcywh_to_xyxy
from detr_panoptic_d2.modeling.postprocess import detr_instances, resize_masks_nearest

SIZES = [  # (processed image size, output size): up, down, equal, non-integer ratios, odd sizes
    ((7, 5), (13, 11)),
    ((10, 10), (20, 20)),
    ((33, 47), (100, 97)),
    ((64, 96), (63, 95)),
    ((50, 60), (17, 23)),
    ((40, 30), (40, 30)),
    ((96, 144), (480, 720)),
    ((123, 77), (1000, 619)),
]


def reference_instances(boxes, scores, classes, mask_logits, image_size, out_size):
    """The earlier formulation: every kept mask as float at the output size at once."""
    h, w = image_size
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h]))
    inst.scores = scores
    inst.pred_classes = classes
    inst.pred_mask_logits = mask_logits
    inst = detector_postprocess(inst, *out_size)
    m = (inst.pred_mask_logits > 0)[:, None].float()
    inst.remove("pred_mask_logits")
    if len(m):
        inst.pred_masks = F.interpolate(m, size=out_size, mode="nearest")[:, 0] > 0.5
    else:
        inst.pred_masks = torch.zeros((0, *out_size), dtype=torch.bool)
    return inst


@pytest.mark.parametrize("image_size,out_size", SIZES)
@pytest.mark.parametrize("chunk_pixels", [1, 3000, 2**26])  # one mask, a few, all at a time
def test_resize_equals_float_nearest_interpolation(image_size, out_size, chunk_pixels):
    g = torch.Generator().manual_seed(sum(image_size) + sum(out_size))
    masks = torch.rand(9, *image_size, generator=g) > 0.5
    expected = F.interpolate(masks[:, None].float(), size=out_size, mode="nearest")[:, 0] > 0.5
    got = resize_masks_nearest(masks, out_size, chunk_pixels=chunk_pixels)
    assert got.dtype == torch.bool and got.shape == expected.shape
    assert torch.equal(got, expected)
    # selected rows of mask logits (binarized > 0), in the index's order
    logits = torch.randn(9, *image_size, generator=g)
    index = torch.tensor([7, 0, 3, 3])
    expected = (
        F.interpolate((logits[index] > 0)[:, None].float(), size=out_size, mode="nearest")[:, 0]
        > 0.5
    )
    got = resize_masks_nearest(logits, out_size, index=index, chunk_pixels=chunk_pixels)
    assert got.shape == (4, *out_size) and torch.equal(got, expected)


@pytest.mark.parametrize("image_size,out_size", SIZES[2:5] + SIZES[-1:])
def test_detr_instances_bit_for_bit(image_size, out_size):
    g = torch.Generator().manual_seed(1)
    q = 12
    boxes = torch.rand(q, 4, generator=g) * 0.5 + 0.25
    boxes[3, 2:] = 0.0  # an empty box: dropped by detector_postprocess
    scores, classes = torch.rand(q, generator=g), torch.randint(0, 5, (q,), generator=g)
    logits = torch.randn(q, *image_size, generator=g)
    got = detr_instances(boxes, scores, classes, logits, image_size, out_size)
    ref = reference_instances(boxes, scores, classes, logits, image_size, out_size)
    assert len(got) == len(ref) == q - 1
    assert (
        set(got.get_fields())
        == set(ref.get_fields())
        == {
            "pred_boxes",
            "scores",
            "pred_classes",
            "pred_masks",
        }
    )
    assert torch.equal(got.pred_masks, ref.pred_masks)
    assert torch.equal(got.pred_boxes.tensor, ref.pred_boxes.tensor)
    assert torch.equal(got.scores, ref.scores) and torch.equal(got.pred_classes, ref.pred_classes)


def test_no_instances_and_no_masks():
    empty = detr_instances(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, 20, 30), (20, 30), (40, 61),
    )  # fmt: skip
    assert empty.pred_masks.shape == (0, 40, 61) and empty.pred_masks.dtype == torch.bool
    boxes_only = detr_instances(
        torch.full((2, 4), 0.5), torch.ones(2), torch.zeros(2, dtype=torch.int64), None,
        (20, 30), (40, 61),
    )  # fmt: skip
    assert not boxes_only.has("pred_masks") and len(boxes_only) == 2


def test_mask_rows_pick_the_rows_of_a_larger_tensor():
    """What PanopticPostProcessor passes: every needed query's upsampled masks and the rows of the
    instance queries among them; the same instances as with those rows copied out."""
    g = torch.Generator().manual_seed(2)
    image_size, out_size = (33, 47), (100, 97)
    whole = torch.randn(10, *image_size, generator=g)
    rows = torch.tensor([1, 4, 5, 9])
    boxes = torch.rand(4, 4, generator=g) * 0.5 + 0.25
    scores, classes = torch.rand(4, generator=g), torch.arange(4)
    got = detr_instances(boxes, scores, classes, whole, image_size, out_size, mask_rows=rows)
    ref = reference_instances(boxes, scores, classes, whole[rows], image_size, out_size)
    assert len(got) == 4 and torch.equal(got.pred_masks, ref.pred_masks)
