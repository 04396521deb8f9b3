from .evaluation import (
    DetrInstanceEvaluator,
    DetrPanopticEvaluator,
    DetrSemSegEvaluator,
    build_detr_evaluator,
    instances_json_from_panoptic,
)
from .optimizer import build_detr_optimizer
from .trainer import DetrPanopticTrainer, end_distributed_run, load_dataset_dicts
