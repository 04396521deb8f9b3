"""DetrPanopticTrainer: two-stage training and PQ evaluation, NaN losses, resume, evaluators, data
errors, multi-process training."""

import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils.events import get_event_storage

from detr_panoptic_d2.data.toy_dataset import register_toy_panoptic, toy_dataset_metadata
from detr_panoptic_d2.engine import (
    DetrInstanceEvaluator,
    DetrPanopticEvaluator,
    DetrPanopticTrainer,
    load_dataset_dicts,
)

PQ_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


def _train(cfg, resume=False):
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_stage_training_then_panoptic_evaluation(tiny, tmp_path):
    stage1 = tiny(tmp_path / "stage1", max_iter=3)
    t1 = _train(stage1)
    final1 = tmp_path / "stage1" / "model_final.pth"
    assert final1.is_file()
    assert t1.iter == 3  # TrainerBase.train leaves iter == MAX_ITER after a complete run
    metrics = [json.loads(line) for line in open(tmp_path / "stage1" / "metrics.json")]
    assert any("loss_ce" in m and "loss_bbox" in m and "loss_giou" in m for m in metrics)

    stage2 = tiny(
        tmp_path / "stage2",
        stage=2,
        max_iter=3,
        extra=[
            "MODEL.DETR.FROZEN_WEIGHTS",
            final1,
            "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD",
            "0.0",
        ],
    )
    t2 = _train(stage2)
    assert (tmp_path / "stage2" / "model_final.pth").is_file()
    # stage 2 trains the mask head only: the detection part equals the stage-1 weights
    ckpt1 = torch.load(final1, map_location="cpu", weights_only=False)["model"]
    state2 = t2.model.state_dict()
    name = next(k for k in ckpt1 if k.startswith("detr.class_embed."))
    torch.testing.assert_close(state2[name], ckpt1[name])
    assert any(k.startswith("mask_head.") for k in state2)
    assert all(
        not p.requires_grad
        for n, p in t2.model.named_parameters()
        if not n.startswith("mask_head.")
    )

    results = DetrPanopticTrainer.test(stage2, t2.model)
    assert "panoptic_seg" in results, results
    pq = results["panoptic_seg"]
    for key in PQ_KEYS:
        assert key in pq, (key, pq)
        assert 0.0 <= pq[key] <= 100.0, (key, pq[key])
    assert (tmp_path / "stage2" / "inference" / "toy_panoptic_val").is_dir()


# ---- NaN loss ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_loss_raises_and_keeps_earlier_checkpoint(tiny, tmp_path):
    nan_from = 2
    cfg = tiny(tmp_path, max_iter=8, extra=["SOLVER.CHECKPOINT_PERIOD", "2"])
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward
    seen = []

    def forward_with_nan(batched_inputs):
        losses = forward(batched_inputs)
        it = get_event_storage().iter
        seen.append(it)
        if it >= nan_from:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    model.forward = forward_with_nan  # instance attribute: nn.Module.__call__ uses it
    with pytest.raises(FloatingPointError, match=f"iteration={nan_from}"):
        trainer.train()
    assert max(seen) == nan_from
    assert (tmp_path / "model_0000001.pth").is_file()  # written after iteration 1, before the NaN
    assert not (tmp_path / "model_final.pth").exists()
    assert not (tmp_path / f"model_{nan_from:07d}.pth").exists()
    ckpt = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ---- resume --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_restores_iteration_optimizer_and_scheduler(tiny, tmp_path):
    cfg = tiny(
        tmp_path, max_iter=4, extra=["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(1,)"]
    )
    _train(cfg)
    ckpt_path = tmp_path / "model_0000001.pth"
    assert ckpt_path.is_file() and (tmp_path / "model_final.pth").is_file()
    # simulate an interruption right after the checkpoint of iteration 1
    os.remove(tmp_path / "model_final.pth")
    os.remove(tmp_path / "model_0000003.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")

    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2

    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert saved["iteration"] == 1
    # Detectron2 >= 0.6 keeps the optimizer in the trainer's state and the scheduler in its hook's
    saved_opt = saved["trainer"]["_trainer"]["optimizer"]
    saved_sched = saved["trainer"]["hooks"]["LRScheduler"]
    cur_opt = trainer.optimizer.state_dict()
    assert saved_opt["state"], "the checkpoint holds no optimizer state"
    assert set(cur_opt["state"]) == set(saved_opt["state"])
    for k, s in saved_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(cur_opt["state"][k][key], s[key], rtol=0, atol=0)
        assert float(cur_opt["state"][k]["step"]) == float(s["step"]) == 2.0
    for g_cur, g_saved in zip(cur_opt["param_groups"], saved_opt["param_groups"]):
        assert g_cur["lr"] == pytest.approx(g_saved["lr"])
    # the model state equals the checkpoint's
    model_state = trainer.model.state_dict()
    for k, v in saved["model"].items():
        torch.testing.assert_close(model_state[k], v, rtol=0, atol=0)
    # scheduler: stepped once per finished iteration, past the step at iteration 1
    assert trainer.scheduler.last_epoch == saved_sched["last_epoch"] == 2
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        cfg.SOLVER.BASE_LR * cfg.SOLVER.GAMMA
    )

    trainer.train()  # finishes iterations 2 and 3
    assert trainer.iter == 4
    assert (tmp_path / "model_final.pth").is_file()


# ---- evaluators ----------------------------------------------------------------------------------
def test_build_evaluator_panoptic_with_mask_head(tiny, tmp_path):
    cfg = tiny(tmp_path, stage=2)
    register_toy_panoptic(cfg.DATASETS.TOY.ROOT)
    evaluator = DetrPanopticTrainer.build_evaluator(cfg, "toy_panoptic_val")
    assert isinstance(evaluator, DatasetEvaluators)
    kinds = [type(e) for e in evaluator._evaluators]
    # no instances JSON registered: AP of things from the panoptic ground truth
    assert kinds == [DetrPanopticEvaluator, DetrInstanceEvaluator]  # a COCOPanopticEvaluator


def test_build_evaluator_stage1_box_ap_and_nothing_to_evaluate(tiny, tmp_path):
    cfg = tiny(tmp_path, stage=1)
    register_toy_panoptic(cfg.DATASETS.TOY.ROOT)
    kinds = [
        type(e) for e in DetrPanopticTrainer.build_evaluator(cfg, "toy_panoptic_val")._evaluators
    ]
    assert kinds == [DetrInstanceEvaluator]
    cfg = tiny(tmp_path, stage=1, extra=["MODEL.DETR.TEST.INSTANCE_ON", "False"])
    with pytest.raises(NotImplementedError) as e:
        DetrPanopticTrainer.build_evaluator(cfg, "toy_panoptic_val")
    msg = str(e.value)
    assert "toy_panoptic_val" in msg and "MODEL.MASK_HEAD.NAME" in msg and "json_file" in msg
    # DefaultTrainer.test turns it into a warning and returns no results instead of failing
    assert DetrPanopticTrainer.test(cfg, DetrPanopticTrainer.build_model(cfg)) == {}


# ---- data set errors -----------------------------------------------------------------------------
@pytest.fixture
def broken_copy(toy_root, tmp_path):
    """``make(kind)`` → name of a data set registered on a broken copy of the toy val JSON."""
    names = []
    val_json = os.path.join(toy_root, "annotations", "panoptic_val.json")

    def make(kind):
        name = f"toy_broken_{kind}_{tmp_path.name}"
        path = tmp_path / f"panoptic_val_{kind}.json"
        if kind == "unknown_category":
            data = json.load(open(val_json))
            data["annotations"][1]["segments_info"][0]["category_id"] = 99
            path.write_text(json.dumps(data))
        elif kind == "corrupt":
            path.write_bytes(b"\x89\xff\x00garbage{\xfe" * 16)
        elif kind == "truncated":
            path.write_text(open(val_json).read()[:100])
        elif kind != "missing":
            raise ValueError(kind)
        register_coco_panoptic(
            name,
            toy_dataset_metadata(),
            os.path.join(toy_root, "val", "images"),
            os.path.join(toy_root, "val", "panoptic"),
            str(path),
        )
        names.append(name)
        return name, str(path)

    yield make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_train_loader_batches_images_of_one_scale(tiny, tmp_path):
    """The trainer's loader with DATALOADER.SIZE_GROUPING_PX 16 on the toy set with multi-scale
    training: each batch's images share their short side's 16-px bucket, and every scale is
    drawn; at 0 (the default) it is Detectron2's aspect-ratio grouping."""
    from detectron2.data.common import AspectRatioGroupedDataset

    from detr_panoptic_d2.data.loader import SizeGroupedDataset

    scales = ["INPUT.MIN_SIZE_TRAIN", "(48, 64, 80)", "INPUT.MAX_SIZE_TRAIN", "160"]
    cfg = tiny(tmp_path, extra=scales + ["DATALOADER.SIZE_GROUPING_PX", "16"])
    loader = DetrPanopticTrainer.build_train_loader(cfg)
    assert type(loader) is SizeGroupedDataset and loader.step == 16
    it = iter(loader)
    shorts = [{min(d["image"].shape[1:]) for d in next(it)} for _ in range(12)]
    assert all(len(s) == 1 for s in shorts), shorts
    assert set().union(*shorts) == {48, 64, 80}
    default = tiny(tmp_path, extra=scales)
    assert type(DetrPanopticTrainer.build_train_loader(default)) is AspectRatioGroupedDataset


def test_load_dataset_dicts_good(toy_root):
    name = "toy_good_for_load_dataset_dicts"
    register_coco_panoptic(
        name,
        toy_dataset_metadata(),
        os.path.join(toy_root, "val", "images"),
        os.path.join(toy_root, "val", "panoptic"),
        os.path.join(toy_root, "annotations", "panoptic_val.json"),
    )
    try:
        dicts = load_dataset_dicts([name])
        assert len(dicts) == 4 and all("segments_info" in d for d in dicts)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_load_dataset_dicts_unknown_category(broken_copy):
    name, path = broken_copy("unknown_category")
    with pytest.raises(KeyError) as e:
        load_dataset_dicts([name])
    msg = str(e.value)
    assert path in msg and name in msg and "99" in msg and "category" in msg


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated"])
def test_load_dataset_dicts_unreadable_json(broken_copy, kind):
    name, path = broken_copy(kind)
    with pytest.raises((OSError, ValueError)) as e:
        load_dataset_dicts([name])
    msg = str(e.value)
    assert path in msg and name in msg
    if kind == "missing":
        assert isinstance(e.value, FileNotFoundError)
    else:
        assert isinstance(e.value, ValueError) and "corrupt annotation JSON" in msg


# ---- multi-process -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU/gloo launch test: with a GPU, launch() uses NCCL"
)
def test_two_process_training_on_cpu(toy_root, tmp_path):
    from _dist_main import train_main  # noqa: E402  (tests/engine is on sys.path under pytest)
    from detectron2.engine import launch

    out = tmp_path / "out"
    max_iter = 3
    launch(train_main, 2, dist_url="auto", args=(str(out), toy_root, max_iter))
    markers = sorted(out.glob("rank_*.json"))
    assert [m.name for m in markers] == ["rank_0.json", "rank_1.json"]
    info = [json.loads(m.read_text()) for m in markers]
    assert [i["rank"] for i in info] == [0, 1]
    assert all(i["world_size"] == 2 and i["iter"] == max_iter and i["ddp"] for i in info)
    # DDP averaged the gradients: both ranks end with the same weights
    assert info[0]["param_sum"] == pytest.approx(info[1]["param_sum"], rel=1e-6, abs=1e-6)
    assert [p.name for p in out.rglob("model_final.pth")] == ["model_final.pth"]
    assert (out / "model_final.pth").is_file()
