"""Config keys of detr-panoptic-d2, with the defaults of the original DETR (panoptic, R-50)."""

from detectron2.config import CfgNode as CN

# SOLVER.OPTIMIZER_IMPL's values (engine/optimizer.py).
OPTIMIZER_IMPLS = ("fused", "foreach", "for-loop", "auto")


def add_detr_panoptic_config(cfg):
    """Add every ``MODEL.DETR.*``, ``MODEL.MASK_HEAD.*``, ``SOLVER.*`` and ``INPUT.*`` key the
    plugin reads."""
    cfg.MODEL.DETR = CN()
    # COCO panoptic: 133 contiguous classes (things + stuff); one more output is the no-object
    # class.
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
    # Training: match every supervised decoder layer and query group in one matcher call (one copy
    # of the costs to the host) and compute each loss for all layers at once; the same matching and,
    # up to float rounding, the same losses as False (one matcher call and one set of loss
    # operations per layer, as DETR).
    cfg.MODEL.DETR.BATCHED_CRITERION = True
    # Stage-1 options for faster convergence, training only: at inference the model is DETR with its
    # NUM_OBJECT_QUERIES queries, and checkpoints load with or without them (see
    # detr_panoptic_d2/modeling/training_queries.py). Both off: DETR's training.
    # Query groups (Group DETR): GROUPS - 1 extra groups of NUM_OBJECT_QUERIES learned queries, each
    # matched one-to-one on its own, self-attention masked between groups, losses averaged over the
    # groups. 1: off; Group DETR used 11. Each group adds decoder work (docs/toy_recipe.md).
    cfg.MODEL.DETR.GROUPS = 1
    # Denoising queries (DN-DETR): COPIES noised copies of the ground truth fed as extra queries
    # behind an attention mask (label as content, box as positional query), trained to give back the
    # ground truth (loss_ce_dn, loss_bbox_dn, loss_giou_dn, weighted as the matching losses).
    # 0: off; DN-DETR's values: 5 copies, box noise 0.4, label noise 0.2 (the toy recipe's).
    cfg.MODEL.DETR.DN = CN()
    cfg.MODEL.DETR.DN.COPIES = 0
    # Box centre moved by up to this x half the width / height, width / height changed by up to this
    # x itself (uniform noise).
    cfg.MODEL.DETR.DN.BOX_NOISE_SCALE = 0.4
    # Probability that a copy's label is replaced by a random class.
    cfg.MODEL.DETR.DN.LABEL_NOISE_RATIO = 0.2
    # Stage 2: path of a stage-1 checkpoint of this plugin; its detection part is loaded and frozen,
    # only the mask head trains. Empty: nothing is frozen.
    cfg.MODEL.DETR.FROZEN_WEIGHTS = ""
    # Trainable BatchNorm in the backbone instead of FrozenBN is set with MODEL.RESNETS.NORM as
    # usual.

    # Mask head (stage 2). NAME selects a head from MASK_HEAD_REGISTRY; empty string: boxes only
    # (stage 1).
    cfg.MODEL.MASK_HEAD = CN()
    cfg.MODEL.MASK_HEAD.NAME = ""
    # Backbone features fed to the FPN-style upsampler, coarse to fine.
    cfg.MODEL.MASK_HEAD.IN_FEATURES = ["res4", "res3", "res2"]
    # Stage-2 training: run the attention maps and the upsampler on matched queries only
    # (identical loss and gradients, much less compute).
    cfg.MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY = True
    # DetrMaskHead: multiply the attention maps by (heads x non-padded positions), so that uniform
    # attention is 1, the scale of the projected image features they are concatenated with, instead
    # of 1 / (M h w). False is DETR's head (and the official checkpoints). True lets a head trained
    # from scratch use the maps within hundreds rather than thousands of iterations (the toy
    # configs).
    cfg.MODEL.MASK_HEAD.SCALE_ATTENTION_MAPS = False
    # Stage 2: a checkpoint to start the mask head from (an official DETR panoptic checkpoint, raw
    # or converted, or one of this plugin's), loaded strictly into the mask head after the detection
    # part came from MODEL.DETR.FROZEN_WEIGHTS: fine-tuning onto other classes keeps the mask head's
    # training.
    cfg.MODEL.MASK_HEAD.WEIGHTS = ""

    # Panoptic inference.
    cfg.MODEL.DETR.TEST = CN()
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    cfg.MODEL.DETR.TEST.INSTANCE_ON = True
    # Semantic output "sem_seg" (K, H, W): class probabilities x mask probabilities summed over all
    # queries (MaskFormer's semantic inference), for SemSegEvaluator's mIoU. Needs the masks of
    # every query; like PANOPTIC_ON, it applies to models with a mask head (stage 2) only.
    cfg.MODEL.DETR.TEST.SEMANTIC_ON = False
    # Keep a query when its argmax is not no-object and its score is strictly above this threshold.
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.85
    # Segments with area <= this many pixels (at the output size) are removed, repeatedly.
    cfg.MODEL.DETR.TEST.MIN_SEGMENT_AREA = 4
    # How kept queries' masks become one panoptic segmentation:
    # "detr": DETR's post-processing (each pixel to the highest mask logit; the official
    #   checkpoints' PQ);
    # "maskformer": MaskFormer's (each pixel to the highest score x mask probability, only where
    #   that mask's probability is >= 0.5; a query winning < OVERLAP_THRESHOLD of its own mask is
    #   dropped as a duplicate).
    cfg.MODEL.DETR.TEST.PANOPTIC_MERGE = "detr"
    cfg.MODEL.DETR.TEST.OVERLAP_THRESHOLD = 0.8
    # "detr" merge only. "first": DETR's behaviour (only the lowest-index query of each stuff class
    # survives); "union": same-class stuff masks are merged into one segment. ("maskformer" always
    # unions.)
    cfg.MODEL.DETR.TEST.STUFF_MERGE = "first"
    # Inference fast path: run the mask head only for queries that pass the threshold.
    cfg.MODEL.DETR.TEST.MASKS_FOR_KEPT_ONLY = True
    # Inference precision: "fp32", "bf16" (CPUs with AVX512-BF16 / AMX, and GPUs) or "fp16" (GPUs;
    # it runs on the CPU too, slowly: a warning says so). bf16 / fp16 run the backbone, transformer
    # and mask-head convolutions with a reduced-precision copy of the weights (cast once;
    # checkpoints untouched); heads, attention-map softmax, mask logits and post-processing
    # stay float32. Training precision is SOLVER.AMP.
    cfg.MODEL.DETR.TEST.PRECISION = "fp32"

    # Mixed-precision training (SOLVER.AMP.ENABLED), on CUDA and on the CPU: autocast to this dtype,
    # "bfloat16" (no gradient scaling) or "float16" (with a gradient scaler; on the CPU it runs,
    # slowly, with a warning); D2Go's key.
    if "PRECISION" not in cfg.SOLVER.AMP:
        cfg.SOLVER.AMP.PRECISION = "bfloat16"
    # With SOLVER.AMP.ENABLED False: turn bfloat16 autocast on where it is expected to win (CUDA
    # GPUs with bf16, CPUs with AMX), off elsewhere, also on CPUs with AVX512-BF16 alone, where the
    # toy recipe lost PQ in equal minutes (docs/toy_recipe.md); the log says which (engine/amp.py).
    cfg.SOLVER.AMP.AUTO = False

    # Training loader transport (data/loader.py): the workers keep this many batches mapped ahead
    # (0: torch's default of 2 images per worker), and tensors travel by torch.multiprocessing's
    # sharing strategy ("file_system"; "": torch's default, a file descriptor per tensor). The
    # same batches either way, only faster to receive.
    cfg.DATALOADER.PREFETCH_BATCHES = 2
    cfg.DATALOADER.SHARING_STRATEGY = "file_system"
    # Batches of images of one orientation whose augmented short sides fall in the same bucket of
    # this many pixels, so that a multi-scale batch is padded to about its own images' size, not to
    # the largest scale drawn (0: Detectron2's aspect-ratio grouping alone). Needs
    # DATALOADER.ASPECT_RATIO_GROUPING, which it refines. Off by default: on the toy recipe it made
    # the stage-1 step 0.9x and cost PQ at equal iterations in both seeds tried
    # (docs/performance.md, "Batches of one scale").
    cfg.DATALOADER.SIZE_GROUPING_PX = 0

    # Wall-clock budget of a training run's loop, in minutes (0: off). Measured early, a machine too
    # slow for SOLVER.MAX_ITER in this time gets the whole schedule scaled down to what fits
    # (max_iter and lr milestones alike); a fast one runs it unchanged (engine/time_budget.py).
    cfg.SOLVER.TIME_BUDGET_MINUTES = 0.0

    # Optimizer: AdamW, backbone lr multiplier, full-model gradient clipping (DETR's recipe).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # torch's implementation of the optimizer's update: "fused" (one kernel for all parameters;
    # falls back to "foreach" where torch has none), "foreach" (multi-tensor operations), "for-loop"
    # (one parameter at a time) or "auto" (torch's choice: foreach on CUDA, for-loop on the CPU).
    # The same update up to float rounding.
    cfg.SOLVER.OPTIMIZER_IMPL = "fused"
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
    # Images (and panoptic PNGs) of more pixels are refused with an error naming the file (a
    # decompression-bomb guard); default: where Pillow refuses (2 * PIL.Image.MAX_IMAGE_PIXELS).
    # 0: no limit.
    cfg.INPUT.MAX_IMAGE_PIXELS = 178956970
    # Toy data set (configs/toy/*): number of images generated and their size range.
    cfg.DATASETS.TOY = CN()
    cfg.DATASETS.TOY.ROOT = "datasets/toy_panoptic"
    cfg.DATASETS.TOY.NUM_TRAIN = 400
    cfg.DATASETS.TOY.NUM_VAL = 200
    cfg.DATASETS.TOY.IMAGE_SIZE = (128, 192)
    # How things are coloured: "class" (each thing class has its own colour, the set of versions <=
    # 3) or "random" (colours drawn at random: only the shape tells the class).
    cfg.DATASETS.TOY.THING_COLORS = "class"


def _check(ok, key, value, what):
    if not ok:
        raise ValueError(f"{key} must be {what}, got {value!r}")


def _check_device(device):
    """MODEL.DEVICE: a device torch parses, and for CUDA one that exists here."""
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(
            f"MODEL.DEVICE must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
            f"{device!r} ({e})"
        ) from e
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE is {device!r} but CUDA is not available here "
            "(torch.cuda.is_available() is False): set MODEL.DEVICE cpu"
        )
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(
            f"MODEL.DEVICE is {device!r} but this machine has {count} CUDA device(s) "
            f"(cuda:0 .. cuda:{count - 1})"
        )


def validate_config(cfg):
    """Check the config values no single model component owns; raise ValueError naming the first
    bad key. Called by the model's ``from_config``, so a broken config fails before anything is
    built. Each component checks its own arguments, naming their keys (in both config worlds:
    :mod:`detr_panoptic_d2.modeling.checks`)."""
    d = cfg.MODEL.DETR
    _check_device(cfg.MODEL.DEVICE)
    _check(
        isinstance(d.BATCHED_CRITERION, bool),
        "MODEL.DETR.BATCHED_CRITERION",
        d.BATCHED_CRITERION,
        "True or False",
    )
    _check(
        cfg.SOLVER.OPTIMIZER_IMPL in OPTIMIZER_IMPLS,
        "SOLVER.OPTIMIZER_IMPL",
        cfg.SOLVER.OPTIMIZER_IMPL,
        " / ".join(repr(v) for v in OPTIMIZER_IMPLS),
    )
    budget = cfg.SOLVER.TIME_BUDGET_MINUTES
    _check(budget >= 0, "SOLVER.TIME_BUDGET_MINUTES", budget, ">= 0 (0: off)")
    amp = cfg.SOLVER.AMP
    _check(
        amp.PRECISION in ("bfloat16", "float16"),
        "SOLVER.AMP.PRECISION",
        amp.PRECISION,
        "'bfloat16' or 'float16'",
    )
    _check(isinstance(amp.AUTO, bool), "SOLVER.AMP.AUTO", amp.AUTO, "True or False")
    if amp.AUTO and not amp.ENABLED:
        _check(
            amp.PRECISION == "bfloat16",
            "SOLVER.AMP.PRECISION",
            amp.PRECISION,
            "'bfloat16' with SOLVER.AMP.AUTO (it turns bfloat16 autocast on)",
        )
    if cfg.MODEL.MASK_HEAD.WEIGHTS:
        _check(
            bool(cfg.MODEL.MASK_HEAD.NAME),
            "MODEL.MASK_HEAD.NAME",
            cfg.MODEL.MASK_HEAD.NAME,
            "set when MODEL.MASK_HEAD.WEIGHTS is (it loads into the mask head)",
        )
    if d.FROZEN_WEIGHTS:
        _check(
            bool(cfg.MODEL.MASK_HEAD.NAME),
            "MODEL.MASK_HEAD.NAME",
            cfg.MODEL.MASK_HEAD.NAME,
            "set when MODEL.DETR.FROZEN_WEIGHTS is (stage 2 trains the mask head only)",
        )
    max_pixels = cfg.INPUT.MAX_IMAGE_PIXELS
    _check(
        isinstance(max_pixels, int) and not isinstance(max_pixels, bool) and max_pixels >= 0,
        "INPUT.MAX_IMAGE_PIXELS",
        max_pixels,
        "an integer >= 0 (0: no limit)",
    )
    toy = cfg.DATASETS.TOY
    _check(
        toy.THING_COLORS in ("class", "random"),
        "DATASETS.TOY.THING_COLORS",
        toy.THING_COLORS,
        "'class' or 'random'",
    )
