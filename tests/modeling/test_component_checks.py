"""Each model component checks its own arguments, in both config worlds: a bad YAML key fails
``build_model`` naming the key; the same value as a LazyConfig override fails ``instantiate``
naming the key and the component's argument (no ``validate_config`` on that path)."""

import os

import pytest
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detr_test_utils import tiny_cfg

from detr_panoptic_d2.modeling.checks import check_arg, check_int

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAZY_STAGE2 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage2.py")

# (YAML key, bad value, LazyConfig path of the same argument, component, argument)
BAD = [
    ("MODEL.DETR.NHEADS", 0, "model.detr.transformer.nhead", "Transformer", "nhead"),
    ("MODEL.DETR.DEC_LAYERS", 0, "model.detr.transformer.num_decoder_layers", "Transformer",
     "num_decoder_layers"),
    ("MODEL.DETR.DROPOUT", 1.0, "model.detr.transformer.dropout", "Transformer", "dropout"),
    ("MODEL.DETR.NUM_OBJECT_QUERIES", 0, "model.detr.num_queries", "DETR", "num_queries"),
    ("MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", 1.5, "model.postprocessor.object_mask_threshold",
     "PanopticPostProcessor", "object_mask_threshold"),
    ("MODEL.DETR.TEST.PANOPTIC_MERGE", "max", "model.postprocessor.merge",
     "PanopticPostProcessor", "merge"),
    ("MODEL.DETR.TEST.STUFF_MERGE", "all", "model.postprocessor.stuff_merge",
     "PanopticPostProcessor", "stuff_merge"),
    ("MODEL.DETR.TEST.MIN_SEGMENT_AREA", -1, "model.postprocessor.min_segment_area",
     "PanopticPostProcessor", "min_segment_area"),
    ("MODEL.DETR.TEST.PRECISION", "int8", "model.test_precision", "DetrPanoptic",
     "test_precision"),
    ("MODEL.DETR.COST_GIOU", -1.0, "model.criterion.matcher.cost_giou", "HungarianMatcher",
     "cost_giou"),
    ("MODEL.DETR.NO_OBJECT_WEIGHT", 0.0, "model.criterion.eos_coef", "SetCriterion", "eos_coef"),
]  # fmt: skip

# stage 1 only (stage 2 trains no training queries and its criterion no class loss)
BAD_STAGE1 = [
    ("MODEL.DETR.CLASS_WEIGHT", -1.0, "model.criterion.weight_dict.loss_ce", "SetCriterion",
     "weight_dict['loss_ce']"),
    ("MODEL.DETR.DN.LABEL_NOISE_RATIO", 2.0, "model.detr.training_queries.label_noise_ratio",
     "TrainingQueries", "label_noise_ratio"),
    ("MODEL.DETR.DN.BOX_NOISE_SCALE", -0.5, "model.detr.training_queries.box_noise_scale",
     "TrainingQueries", "box_noise_scale"),
]  # fmt: skip
LAZY_STAGE1 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage1.py")


@pytest.mark.parametrize("key,value,path,component,arg", BAD, ids=[b[0] for b in BAD])
def test_yaml_key_named(key, value, path, component, arg):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(tiny_cfg(mask_head=True, **{key: value}))


@pytest.mark.parametrize("key,value,path,component,arg", BAD, ids=[b[0] for b in BAD])
def test_lazy_override_names_key_and_argument(key, value, path, component, arg):
    cfg = LazyConfig.load(LAZY_STAGE2)
    cfg = LazyConfig.apply_overrides(cfg, [f"{path}={value!r}", "model.frozen_weights=''"])
    with pytest.raises(ValueError) as err:
        instantiate(cfg.model)
    assert key in str(err.value) and f"{component}'s {arg}" in str(err.value), err.value


@pytest.mark.parametrize("key,value,path,component,arg", BAD_STAGE1, ids=[b[0] for b in BAD_STAGE1])
def test_stage1_components(key, value, path, component, arg):
    opts = {"MODEL.DETR.DN.COPIES": 2, key: value}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(tiny_cfg(**opts))
    cfg = LazyConfig.apply_overrides(LazyConfig.load(LAZY_STAGE1), [f"{path}={value!r}"])
    with pytest.raises(ValueError) as err:
        instantiate(cfg.model)
    assert key in str(err.value) and f"{component}'s {arg}" in str(err.value), err.value


@pytest.mark.parametrize("key,value", [("MODEL.DETR.GROUPS", 0), ("MODEL.DETR.DN.COPIES", -1)])
def test_training_query_counts_checked_even_when_none_are_built(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(tiny_cfg(**{key: value}))


def test_mask_head_checks_its_groupnorm_shapes():
    cfg = tiny_cfg(mask_head=True, **{"MODEL.DETR.HIDDEN_DIM": 96, "MODEL.DETR.NHEADS": 8})
    with pytest.raises(ValueError, match=r"MODEL\.DETR\.HIDDEN_DIM \(DetrMaskHead's hidden_dim\)"):
        build_model(cfg)
    cfg = tiny_cfg(mask_head=True, **{"MODEL.MASK_HEAD.IN_FEATURES": ["res4", "res3"]})
    with pytest.raises(ValueError, match=r"MODEL\.MASK_HEAD\.IN_FEATURES"):
        build_model(cfg)


def test_check_helpers():
    check_arg(True, "C", "a", "K", 1, "anything")
    with pytest.raises(ValueError, match=r"^K \(C's a\) must be > 0, got -1$"):
        check_arg(False, "C", "a", "K", -1, "> 0")
    check_int("C", "n", "K", 3, 1)
    for bad in (0, 2.0, True, "3"):
        with pytest.raises(ValueError, match="an integer >= 1"):
            check_int("C", "n", "K", bad, 1)
