"""Non-finite model outputs in training: ``DetrPanoptic.losses`` raises FloatingPointError naming
the iteration and the first non-finite entry, before the matcher runs."""

import re

import pytest
import torch
from detectron2.utils.events import EventStorage
from detr_test_utils import DEC_LAYERS, build_tiny_model, make_input

from detr_panoptic_d2.modeling.meta_arch import check_finite_outputs, named_float_outputs

OPTIONS = {"MODEL.DETR.GROUPS": 2, "MODEL.DETR.DN.COPIES": 2, "MODEL.DETR.DROPOUT": 0.0}


def _batch():
    return [make_input(64, 96, 3), make_input(96, 64, 1, seed=1)]


def _training_outputs(model):
    model.train()
    images, mask = model.preprocess_image(_batch())
    targets = model.prepare_targets(_batch(), images)
    with torch.no_grad():
        outputs, _ = model.detr(images.tensor, mask, targets)
    return outputs


def test_names_of_every_output_in_order():
    outputs = _training_outputs(build_tiny_model(**OPTIONS))
    names = [n for n, _ in named_float_outputs(outputs)]
    layer = ["pred_logits", "pred_boxes"]
    aux = [f"aux_outputs[{i}].{k}" for i in range(DEC_LAYERS - 1) for k in layer]
    groups = [f"group_outputs.{k}" for k in layer] + [f"group_outputs.{k}" for k in aux]
    dn = [f"dn_outputs.{k}" for k in layer] + [f"dn_outputs.{k}" for k in aux]
    assert names == layer + aux + groups + dn  # dn_valid (bool) and the counts are not outputs


@pytest.mark.parametrize(
    "entry", ["aux_outputs[0].pred_boxes", "dn_outputs.pred_logits", "group_outputs.pred_boxes"]
)
def test_first_nonfinite_entry_and_iteration_are_named(entry):
    outputs = _training_outputs(build_tiny_model(**OPTIONS))
    check_finite_outputs(outputs)  # finite: no error
    tensor = dict(named_float_outputs(outputs))[entry]
    tensor[0, -1, 0] = float("inf")
    with EventStorage(start_iter=41):
        with pytest.raises(
            FloatingPointError, match=re.escape(f"{entry} is infinite or NaN at iteration=41")
        ):
            check_finite_outputs(outputs)
    with pytest.raises(
        FloatingPointError, match=re.escape(f"output {entry} is infinite or NaN (before")
    ):
        check_finite_outputs(outputs)  # outside an EventStorage: no iteration to name


def test_nan_weight_stops_the_training_forward_before_the_matcher():
    model = build_tiny_model(mask_head=True)
    with torch.no_grad():
        model.detr.class_embed.weight[3, 5] = float("nan")

    def matcher(*args, **kwargs):
        raise AssertionError("the matcher saw the non-finite outputs")

    model.criterion.matcher.forward = matcher  # instance attribute: __call__ uses it
    model.train()
    with EventStorage(start_iter=7):
        with pytest.raises(
            FloatingPointError, match=r"pred_logits is infinite or NaN at iteration=7"
        ):
            model(_batch())
