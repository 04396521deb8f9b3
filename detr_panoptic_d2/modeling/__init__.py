from .backbone import build_detr_resnet_backbone
from .criterion import SetCriterion, dice_loss, focal_loss
from .detr import DETR, MLP
from .mask_head import (
    MASK_HEAD_REGISTRY,
    DetrMaskHead,
    MaskHeadSmallConv,
    MHAttentionMap,
    build_mask_head,
)
from .matcher import HungarianMatcher
from .meta_arch import DetrPanoptic
from .position_encoding import PositionEmbeddingSine
from .postprocess import PanopticPostProcessor, maskformer_merge, panoptic_merge, select_queries
from .transformer import Transformer
