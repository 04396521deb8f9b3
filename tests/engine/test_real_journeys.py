"""Users' journeys end to end, on generated data laid out exactly as the real sets lie on disk and
registered the way Detectron2 (builtin COCO and Cityscapes), Mask2Former (ADE20K) and users (their
own register_coco_panoptic) register them: stage 1 → stage 2 → --eval-only through
tools/train_net.py, with the project's configs (only DATASETS.*, NUM_CLASSES and CPU-sized
model/input overrides set), and fine-tuning an official checkpoint onto a 9-class set."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch
from dataset_layouts import write_layout

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COCO_CONFIGS = os.path.join(REPO, "configs", "COCO-PanopticSegmentation")
USER_SCRIPT = os.path.join(REPO, "tests", "engine", "_user_train_net.py")
# CPU-sized model and inputs; no pretrained weights (nothing may be downloaded)
SMALL = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.DETR.HIDDEN_DIM", "128",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2",
    "MODEL.DETR.DIM_FEEDFORWARD", "128", "MODEL.DETR.NUM_OBJECT_QUERIES", "12",
]  # fmt: skip
CHEAP = [
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.CHECKPOINT_PERIOD", "100000",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
    # an untrained model keeps its queries: real segments
    "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.0",
    "SEED", "1",
]  # fmt: skip
PQ_KEYS = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
AP_KEYS = ["AP", "AP50", "AP75"]


def run(args, d2_root, env=None, script=None):
    env = dict(os.environ, DETECTRON2_DATASETS=str(d2_root), OMP_NUM_THREADS="2", **(env or {}))
    proc = subprocess.run(
        [sys.executable, script or os.path.join(REPO, "tools", "train_net.py"), *map(str, args)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def copypaste(log):
    """{task: {metric: value}} from Detectron2's "copypaste:" result lines (the last of each
    task)."""
    results, lines = {}, re.findall(r"copypaste: (.*)", log)
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            results[line[len("Task: ") :]] = dict(zip(names, map(float, values)))
    return results


def check_metrics(results, tasks):
    for task, keys in tasks.items():
        assert task in results, (task, sorted(results))
        for key in keys:
            assert math.isfinite(results[task][key]), (task, key, results[task])


def diverse_init(path, num_classes):
    """A stage-1 starting checkpoint of the SMALL model whose queries predict various classes: an
    untrained DETR gives every query the same class (its decoder outputs hardly differ yet), often a
    stuff class, which would leave instance AP without a single prediction (NaN)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from detr_panoptic_d2 import add_detr_panoptic_config

    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(os.path.join(COCO_CONFIGS, "detr_R_50_stage1.yaml"))
    cfg.merge_from_list([*SMALL, "MODEL.DETR.NUM_CLASSES", str(num_classes), "DATASETS.TRAIN", "()",
                         "DATASETS.TEST", "()"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.detr.class_embed.weight.mul_(100)
        model.detr.class_embed.bias.zero_()
        model.detr.query_embed.weight.mul_(10)
    torch.save({"model": model.state_dict()}, path)
    return path


def journey(
    tmp_path, d2_root, train, test, num_classes, tasks1, tasks2, extra=(), script=None, env=None
):
    """stage 1 (from diverse_init) → stage 2 → --eval-only with the COCO R-50 configs; returns the
    logs."""
    init = diverse_init(tmp_path / "init.pth", num_classes)
    common = [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
        "MODEL.DETR.NUM_CLASSES", num_classes, *SMALL, *CHEAP, *extra,
    ]  # fmt: skip
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    stage1 = os.path.join(COCO_CONFIGS, "detr_R_50_stage1.yaml")
    stage2 = os.path.join(COCO_CONFIGS, "detr_R_50_stage2.yaml")
    log1 = run(
        ["--config-file", stage1, *common, "MODEL.WEIGHTS", init, "OUTPUT_DIR", s1],
        d2_root,
        env,
        script,
    )
    check_metrics(copypaste(log1), tasks1)
    log2 = run(
        ["--config-file", stage2, *common, "MODEL.DETR.FROZEN_WEIGHTS", s1 / "model_final.pth",
         "OUTPUT_DIR", s2],
        d2_root, env, script,
    )  # fmt: skip
    check_metrics(copypaste(log2), tasks2)
    log3 = run(
        ["--config-file", stage2, "--eval-only", *common, "MODEL.WEIGHTS", s2 / "model_final.pth",
         "OUTPUT_DIR", tmp_path / "eval"],
        d2_root, env, script,
    )  # fmt: skip
    check_metrics(copypaste(log3), tasks2)
    return log1, log2, log3


def test_builtin_coco(tmp_path):
    root = tmp_path / "d2"
    write_layout(root, "coco", num_train=6, num_val=3, image_size=(96, 128))
    logs = journey(
        tmp_path, root, "coco_2017_train_panoptic", "coco_2017_val_panoptic", 133,
        tasks1={"bbox": AP_KEYS},
        tasks2={"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS},
    )  # fmt: skip
    # instance AP over the 80 thing classes, per category, named after the instances JSON
    assert "Per-category bbox AP" in logs[0] and "Per-category segm AP" in logs[2]
    assert "| person " in logs[2] and "| sky-other-merged" not in logs[2]
    # coco_2017_val_100_panoptic, eval-only
    log = run(
        ["--config-file", os.path.join(COCO_CONFIGS, "detr_R_50_stage2.yaml"), "--eval-only",
         "DATASETS.TEST", "('coco_2017_val_100_panoptic',)", *SMALL, *CHEAP,
         "MODEL.WEIGHTS", tmp_path / "stage2" / "model_final.pth", "OUTPUT_DIR", tmp_path / "v100"],
        root,
    )  # fmt: skip
    check_metrics(copypaste(log), {"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS})


def test_builtin_cityscapes(tmp_path):
    root = tmp_path / "d2"
    write_layout(root, "cityscapes", num_train=6, num_val=3, image_size=(96, 128))
    journey(
        tmp_path, root, "cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val", 19,
        tasks1={"bbox": AP_KEYS},
        tasks2={"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS,
                "sem_seg": ["mIoU", "pACC"]},
        extra=["MODEL.DETR.TEST.SEMANTIC_ON", "True"],
    )  # fmt: skip


def test_ade20k_as_mask2former_registers_it(tmp_path):
    root = tmp_path / "d2"
    write_layout(root, "ade20k", num_train=6, num_val=3, image_size=(96, 128))
    journey(
        tmp_path, root, "ade20k_panoptic_train", "ade20k_panoptic_val", 150,
        tasks1={"bbox": AP_KEYS},
        tasks2={"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS, "sem_seg": ["mIoU"]},
        extra=["MODEL.DETR.TEST.SEMANTIC_ON", "True"],
    )  # fmt: skip


def test_coco_with_semantic_ground_truth(tmp_path):
    root = tmp_path / "d2"
    write_layout(root, "coco", num_train=6, num_val=3, image_size=(96, 128))
    journey(
        tmp_path, root,
        "coco_2017_train_panoptic_with_sem_seg", "coco_2017_val_panoptic_with_sem_seg", 133,
        tasks1={"bbox": AP_KEYS},
        tasks2={"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS, "sem_seg": ["mIoU"]},
        extra=["MODEL.DETR.TEST.SEMANTIC_ON", "True"],
    )  # fmt: skip


def test_custom_registration(tmp_path):
    """A user's own set (9 classes, their own register_coco_panoptic in their copy of
    train_net.py)."""
    root = tmp_path / "warehouse"
    write_layout(root, "custom", num_train=6, num_val=3, image_size=(96, 128))
    journey(
        tmp_path, tmp_path / "unused", "warehouse_train", "warehouse_val", 9,
        tasks1={"bbox": AP_KEYS},
        tasks2={"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS},
        script=USER_SCRIPT, env={"WAREHOUSE_ROOT": str(root)},
    )  # fmt: skip


def test_fine_tune_official_checkpoint_on_new_classes(tmp_path):
    """An official R-50 panoptic checkpoint (raw layout, random values) → stage 1 on a 9-class set
    (class head re-initialized, all else loaded) → stage 2 with the detection part from that stage 1
    and the mask head from the official checkpoint (MODEL.MASK_HEAD.WEIGHTS) → --eval-only."""
    from official_layout import write_official_checkpoint

    official = tmp_path / "detr-r50-panoptic.pth"
    source = write_official_checkpoint(official, distinct_queries=True)
    root = tmp_path / "warehouse"
    write_layout(root, "custom", num_train=4, num_val=2, image_size=(96, 128))
    cheap = [
        "MODEL.WEIGHTS", official, "DATASETS.TRAIN", "('warehouse_train',)", "DATASETS.TEST",
        "('warehouse_val',)", "MODEL.DETR.NUM_CLASSES", "9", *CHEAP,
    ]  # fmt: skip
    env = {"WAREHOUSE_ROOT": str(root)}
    stage1 = os.path.join(COCO_CONFIGS, "detr_R_50_stage1.yaml")
    log1 = run(
        ["--config-file", stage1, *cheap, "OUTPUT_DIR", tmp_path / "s1"], tmp_path, env, USER_SCRIPT
    )
    assert "an original DETR panoptic checkpoint, converted on the fly" in log1
    assert re.search(
        r"Re-initialized for MODEL.DETR.NUM_CLASSES=9.*detr\.class_embed\.weight", log1
    )
    check_metrics(copypaste(log1), {"bbox": AP_KEYS})
    log2 = run(
        ["--config-file", os.path.join(COCO_CONFIGS, "detr_R_50_stage2.yaml"), *cheap,
         "MODEL.WEIGHTS", "",
         "MODEL.DETR.FROZEN_WEIGHTS", tmp_path / "s1" / "model_final.pth",
         "MODEL.MASK_HEAD.WEIGHTS", official,
         "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", tmp_path / "s2"],
        tmp_path, env, USER_SCRIPT,
    )  # fmt: skip
    assert re.search(
        r"Loaded \d+ tensors of 'mask_head\.\*' from .*MODEL\.MASK_HEAD\.WEIGHTS", log2
    )
    check_metrics(copypaste(log2), {"panoptic_seg": PQ_KEYS, "bbox": AP_KEYS, "segm": AP_KEYS})
    # stage 1 started from everything of the official checkpoint but the class head; stage 2's mask
    # head from the official one
    expected = source.state_dict()
    s1 = torch.load(tmp_path / "s1" / "model_final.pth", map_location="cpu", weights_only=False)[
        "model"
    ]
    s2 = torch.load(tmp_path / "s2" / "model_final.pth", map_location="cpu", weights_only=False)[
        "model"
    ]
    assert s1["detr.class_embed.weight"].shape == (10, 256)
    for key in (
        "detr.backbone.stem.conv1.weight",
        "detr.backbone.res2.0.conv1.weight",
    ):  # frozen (FREEZE_AT 2)
        assert torch.equal(s1[key], expected[key]), key
    for key in (
        "detr.transformer.decoder_layers.5.linear2.weight",
        "detr.query_embed.weight",
    ):  # 2 AdamW steps
        torch.testing.assert_close(s1[key], expected[key], atol=1e-3, rtol=0)
    assert torch.equal(
        s2["detr.query_embed.weight"], s1["detr.query_embed.weight"]
    )  # frozen in stage 2
    for key in (
        "mask_head.mask_head.lay1.weight",
        "mask_head.bbox_attention.q_linear.weight",
    ):  # 1 step
        torch.testing.assert_close(s2[key], expected[key], atol=1e-3, rtol=0)
