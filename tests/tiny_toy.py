"""The project's toy configs made tiny and CPU-cheap, for the engine, tools and export tests and
the workers they spawn (a plain module on the tests' path; the fixtures are in
tests/engine/conftest.py)."""

import os

from detectron2.config import get_cfg

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data import register_datasets_from_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage1.yaml")
STAGE2 = os.path.join(REPO, "configs", "toy", "detr_R18_toy_stage2.yaml")
TOY_NUM_TRAIN, TOY_NUM_VAL, TOY_IMAGE_SIZE = 8, 4, (64, 96)
# The device the tiny configs put the model on: "cpu", or e.g. "cuda" when the GPU check
# (benchmarks/gpu_check.py) runs the tests on a GPU.
TEST_DEVICE = os.environ.get("DETR_TEST_DEVICE", "cpu")


def tiny_opts(out_dir, max_iter=2, toy_root=None):
    """Config overrides (KEY VALUE list) that make the toy recipe tiny and fast on CPU.

    HIDDEN_DIM and NHEADS stay at the toy values (128, 8): DetrMaskHead's GroupNorm needs them."""
    toy_root = toy_root or os.path.join(str(out_dir), "toy")
    return [
        "MODEL.DEVICE",
        TEST_DEVICE,
        "MODEL.DETR.ENC_LAYERS",
        "1",
        "MODEL.DETR.DEC_LAYERS",
        "1",
        "MODEL.DETR.NUM_OBJECT_QUERIES",
        "8",
        "MODEL.DETR.DIM_FEEDFORWARD",
        "128",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.CHECKPOINT_PERIOD",
        "100000",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "96",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "96",
        "DATALOADER.NUM_WORKERS",
        "0",
        "DATASETS.TOY.ROOT",
        str(toy_root),
        "DATASETS.TOY.NUM_TRAIN",
        str(TOY_NUM_TRAIN),
        "DATASETS.TOY.NUM_VAL",
        str(TOY_NUM_VAL),
        "DATASETS.TOY.IMAGE_SIZE",
        str(TOY_IMAGE_SIZE),
        "TEST.EVAL_PERIOD",
        "0",
        "OUTPUT_DIR",
        str(out_dir),
    ]


def tiny_lazy_opts(out_dir, max_iter=2, toy_root=None):
    """:func:`tiny_opts` for the LazyConfig twins (``a.b=value`` overrides)."""
    toy_root = toy_root or os.path.join(str(out_dir), "toy")
    aug_train = "dataloader.train.mapper.augmentations"
    aug_test = "dataloader.test.mapper.augmentations"
    return [
        f"train.device={TEST_DEVICE}",
        "model.detr.transformer.num_encoder_layers=1",
        "model.detr.transformer.num_decoder_layers=1",
        "model.detr.num_queries=8",
        "model.detr.transformer.dim_feedforward=128",
        "dataloader.train.total_batch_size=2",
        f"train.max_iter={max_iter}",
        "lr_multiplier.steps=[]",
        "lr_multiplier.warmup_iters=0",
        "train.checkpointer.period=100000",
        f"{aug_train}.min_size=[64]",
        f"{aug_train}.max_size=96",
        f"{aug_test}.min_size=64",
        f"{aug_test}.max_size=96",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"datasets.toy.root={toy_root}",
        f"datasets.toy.num_train={TOY_NUM_TRAIN}",
        f"datasets.toy.num_val={TOY_NUM_VAL}",
        f"datasets.toy.image_size=[{TOY_IMAGE_SIZE[0]},{TOY_IMAGE_SIZE[1]}]",
        "train.eval_period=0",
        f"train.output_dir={out_dir}",
    ]


def tiny_cfg(out_dir, stage=1, max_iter=2, extra=(), toy_root=None, freeze=True):
    """The toy stage-1 (or stage-2) config made tiny; ``extra``: more KEY VALUE overrides."""
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(STAGE1 if stage == 1 else STAGE2)
    cfg.merge_from_list(tiny_opts(out_dir, max_iter, toy_root) + [str(x) for x in extra])
    if freeze:
        cfg.freeze()
    register_datasets_from_cfg(cfg)  # as tools/train_net.py's set-up does
    return cfg


def unregister_toy():
    """Forget the toy split names: ``register_toy_panoptic`` skips names already registered, so a
    test must not inherit a registration made for another DATASETS.TOY.ROOT."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from detr_panoptic_d2.data.toy_dataset import TOY_DATASET_NAMES

    for name in TOY_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def generate_tiny_toy(root):
    """Generate the small toy set the tiny configs expect at ``root``; returns ``root`` as str."""
    from detr_panoptic_d2.data.toy_dataset import generate_toy_panoptic

    generate_toy_panoptic(
        root, num_train=TOY_NUM_TRAIN, num_val=TOY_NUM_VAL, image_size=TOY_IMAGE_SIZE
    )
    return str(root)


def write_targetless_panoptic(root, num_images=4, size=(64, 80), crowd_every=2):
    """A toy-category panoptic set (COCO panoptic format) whose images give no training target:
    every other image (``crowd_every``) has one crowd thing segment only, the others no segment at
    all (void PNG). Returns (image_root, panoptic_root, panoptic_json)."""
    import json

    import numpy as np
    from panopticapi.utils import id2rgb
    from PIL import Image

    from detr_panoptic_d2.data.toy_dataset import TOY_CATEGORIES

    root = os.fspath(root)
    image_root, panoptic_root = os.path.join(root, "images"), os.path.join(root, "panoptic")
    os.makedirs(image_root, exist_ok=True)
    os.makedirs(panoptic_root, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    thing = next(c for c in TOY_CATEGORIES if c["isthing"])
    images, annotations = [], []
    for i in range(num_images):
        stem = f"{i + 1:06d}"
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(os.path.join(image_root, stem + ".jpg"), quality=95)
        ids = np.zeros((h, w), dtype=np.int64)
        segments = []
        if crowd_every and i % crowd_every == 0:
            ids[h // 4 : h // 2, w // 4 : w // 2] = 1000
            area = int((ids == 1000).sum())
            x0, y0 = w // 4, h // 4
            segments.append(
                {
                    "id": 1000,
                    "category_id": thing["id"],
                    "iscrowd": 1,
                    "area": area,
                    "bbox": [x0, y0, w // 2 - x0, h // 2 - y0],
                }
            )
        Image.fromarray(id2rgb(ids)).save(os.path.join(panoptic_root, stem + ".png"))
        images.append({"id": i + 1, "file_name": stem + ".jpg", "height": h, "width": w})
        annotations.append(
            {"image_id": i + 1, "file_name": stem + ".png", "segments_info": segments}
        )
    panoptic_json = os.path.join(root, "panoptic.json")
    with open(panoptic_json, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": TOY_CATEGORIES}, f)
    return image_root, panoptic_root, panoptic_json
