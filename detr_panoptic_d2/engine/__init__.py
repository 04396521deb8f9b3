from .optimizer import build_detr_optimizer
from .trainer import DetrPanopticTrainer, load_dataset_dicts
