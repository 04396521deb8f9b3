from .backbone import build_detr_backbone
from .criterion import SetCriterion, dice_loss, focal_loss
from .mask_head import MASK_HEAD_REGISTRY, DetrMaskHead, MaskHeadSmallConv, MHAttentionMap, build_mask_head
from .matcher import HungarianMatcher
from .meta_arch import DetrPanoptic
from .position_encoding import PositionEmbeddingSine
from .postprocess import maskformer_merge, panoptic_merge, select_queries
from .transformer import Transformer
