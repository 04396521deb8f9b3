"""Config keys of detr-panoptic-d2, with the defaults of the original DETR (panoptic, R-50)."""
from detectron2.config import CfgNode as CN


def add_detr_panoptic_config(cfg):
    """Add every ``MODEL.DETR.*``, ``MODEL.MASK_HEAD.*``, ``SOLVER.*`` and ``INPUT.*`` key the plugin reads."""
    cfg.MODEL.DETR = CN()
    # COCO panoptic: 133 contiguous classes (things + stuff); one more output is the no-object class.
    cfg.MODEL.DETR.NUM_CLASSES = 133
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    cfg.MODEL.DETR.NHEADS = 8
    cfg.MODEL.DETR.ENC_LAYERS = 6
    cfg.MODEL.DETR.DEC_LAYERS = 6
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048
    cfg.MODEL.DETR.DROPOUT = 0.1
    cfg.MODEL.DETR.PRE_NORM = False
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 100
    # Backbone feature fed to the transformer (DETR: res5; DC5 through MODEL.RESNETS.RES5_DILATION).
    cfg.MODEL.DETR.IN_FEATURE = "res5"
    # Auxiliary (deep supervision) losses on every intermediate decoder layer.
    cfg.MODEL.DETR.DEEP_SUPERVISION = True
    # Relative weight of the no-object class in the classification loss ("eos_coef").
    cfg.MODEL.DETR.NO_OBJECT_WEIGHT = 0.1
    # Hungarian matcher costs.
    cfg.MODEL.DETR.COST_CLASS = 1.0
    cfg.MODEL.DETR.COST_BBOX = 5.0
    cfg.MODEL.DETR.COST_GIOU = 2.0
    # Loss weights.
    cfg.MODEL.DETR.CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.L1_WEIGHT = 5.0
    cfg.MODEL.DETR.GIOU_WEIGHT = 2.0
    cfg.MODEL.DETR.MASK_WEIGHT = 1.0  # sigmoid focal loss on masks
    cfg.MODEL.DETR.DICE_WEIGHT = 1.0
    cfg.MODEL.DETR.FOCAL_ALPHA = 0.25
    cfg.MODEL.DETR.FOCAL_GAMMA = 2.0
    # Stage 2: path of a stage-1 checkpoint of this plugin; its detection part is loaded and frozen,
    # only the mask head trains. Empty: nothing is frozen.
    cfg.MODEL.DETR.FROZEN_WEIGHTS = ""
    # Trainable BatchNorm in the backbone instead of FrozenBN is set with MODEL.RESNETS.NORM as usual.

    # Mask head (stage 2). NAME selects a head from MASK_HEAD_REGISTRY; empty string: boxes only (stage 1).
    cfg.MODEL.MASK_HEAD = CN()
    cfg.MODEL.MASK_HEAD.NAME = ""
    # Backbone features fed to the FPN-style upsampler, coarse to fine.
    cfg.MODEL.MASK_HEAD.IN_FEATURES = ["res4", "res3", "res2"]
    # Stage-2 training: run the attention maps and the upsampler on matched queries only
    # (identical loss and gradients, much less compute).
    cfg.MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY = True
    # DetrMaskHead: multiply the attention maps by (heads x non-padded positions), so that uniform attention
    # is 1, the scale of the projected image features they are concatenated with, instead of 1 / (M h w).
    # False is DETR's head (and the official checkpoints). True lets a head trained from scratch use the
    # maps within hundreds rather than thousands of iterations (the toy configs).
    cfg.MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS = False

    # Panoptic inference.
    cfg.MODEL.DETR.TEST = CN()
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    cfg.MODEL.DETR.TEST.INSTANCE_ON = True
    # Keep a query when its argmax is not no-object and its score is strictly above this threshold.
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.85
    # Segments with area <= this many pixels (at the output size) are removed, repeatedly.
    cfg.MODEL.DETR.TEST.MIN_SEGMENT_AREA = 4
    # How kept queries' masks become one panoptic segmentation:
    # "detr": DETR's post-processing (each pixel to the highest mask logit; the official checkpoints' PQ);
    # "maskformer": MaskFormer's (each pixel to the highest score x mask probability, only where that mask's
    # probability is >= 0.5; a query winning < OVERLAP_THRESHOLD of its own mask is dropped as a duplicate).
    cfg.MODEL.DETR.TEST.PANOPTIC_MERGE = "detr"
    cfg.MODEL.DETR.TEST.OVERLAP_THRESHOLD = 0.8
    # "detr" merge only. "first": DETR's behaviour (only the lowest-index query of each stuff class
    # survives); "union": same-class stuff masks are merged into one segment. ("maskformer" always unions.)
    cfg.MODEL.DETR.TEST.STUFF_MERGE = "first"
    # Inference fast path: run the mask head only for queries that pass the threshold.
    cfg.MODEL.DETR.TEST.MASKS_FOR_KEPT_ONLY = True

    # Optimizer: AdamW, backbone lr multiplier, full-model gradient clipping (DETR's recipe).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

    # DETR's augmentation: with probability 0.5, resize shortest edge to one of CROP_PRE_RESIZE and
    # take a random crop of size in [CROP.SIZE[0], CROP.SIZE[1]] ("absolute_range"), then the usual
    # multi-scale resize (INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN) and horizontal flip.
    cfg.INPUT.DETR_CROP = CN()
    cfg.INPUT.DETR_CROP.ENABLED = True
    cfg.INPUT.DETR_CROP.PROB = 0.5
    cfg.INPUT.DETR_CROP.PRE_RESIZE = (400, 500, 600)
    cfg.INPUT.DETR_CROP.SIZE = (384, 600)
    # Toy data set (configs/toy/*): number of images generated and their size range.
    cfg.DATASETS.TOY = CN()
    cfg.DATASETS.TOY.ROOT = "datasets/toy_panoptic"
    cfg.DATASETS.TOY.NUM_TRAIN = 400
    cfg.DATASETS.TOY.NUM_VAL = 200
    cfg.DATASETS.TOY.IMAGE_SIZE = (128, 192)
    # How things are coloured: "class" (each thing class has its own colour, the set of versions <= 3) or
    # "random" (colours drawn at random: only the shape tells the class).
    cfg.DATASETS.TOY.THING_COLORS = "class"
