"""The LazyConfig twins (configs/**/*.py, detr_panoptic_d2/lazy.py) against their YAML files: the
same model (parameter names, shapes, hyper-parameters, outputs on the same weights and input), the
same optimizer groups and lr schedule, and overrides the LazyConfig way."""

import glob
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detr_test_utils import make_input
from tiny_toy import REPO

from detr_panoptic_d2.engine.optimizer import build_detr_optimizer
from detr_panoptic_d2.lazy import lazy_config_from_yaml, yaml_config

YAMLS = sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)
TOY1 = "toy/detr_R18_toy_stage1"
TOY2 = "toy/detr_R18_toy_stage2"


def _paths(name):
    return os.path.join(REPO, "configs", name + ".py"), os.path.join(
        REPO, "configs", name + ".yaml"
    )


def _models(name, yaml_opts=(), lazy_opts=()):
    """The model of the LazyConfig ``name`` and of its YAML twin, built from the same seed."""
    py, yml = _paths(name)
    lazy = LazyConfig.apply_overrides(LazyConfig.load(py), list(lazy_opts))
    cfg = yaml_config(yml, ["MODEL.DEVICE", "cpu", *yaml_opts])
    torch.manual_seed(0)
    from_lazy = instantiate(lazy.model)
    torch.manual_seed(0)
    from_yaml = build_model(cfg)
    return from_lazy, from_yaml


def _hyper_parameters(model):
    """What the constructors were given, beyond the parameter shapes."""
    c, p, d = model.criterion, model.postprocessor, model.detr
    return {
        "modules": repr(model),  # layer types, sizes, dropout, norms
        "criterion": (
            c.num_classes,
            dict(c.weight_dict),
            tuple(c.losses),
            c.num_aux_layers,
            c.eos_coef,
            c.focal_alpha,
            c.focal_gamma,
            c.denoising,
        ),
        "matcher": (c.matcher.cost_class, c.matcher.cost_bbox, c.matcher.cost_giou),
        "post": {k: v for k, v in vars(p).items() if not k.startswith("_") and k != "training"},
        "is_thing": p.is_thing.tolist(),
        "detr": (d.num_queries, d.aux_loss, d.in_feature),
        "pixel": (model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()),
        "precision": model.test_precision,
        "frozen": model.frozen,
    }


def test_every_yaml_has_a_lazy_twin():
    assert len(YAMLS) == 8, YAMLS  # COCO R-50 / R-50-DC5 / R-101 and the toy, stages 1 and 2
    missing = [
        y for y in YAMLS if not os.path.isfile(os.path.join(REPO, "configs", y[:-5] + ".py"))
    ]
    assert not missing


@pytest.mark.parametrize("name", [y[:-5] for y in YAMLS])
def test_twin_builds_the_same_model(name):
    from_lazy, from_yaml = _models(name)
    s_lazy, s_yaml = from_lazy.state_dict(), from_yaml.state_dict()
    assert list(s_lazy) == list(s_yaml)
    assert {k: v.shape for k, v in s_lazy.items()} == {k: v.shape for k, v in s_yaml.items()}
    assert _hyper_parameters(from_lazy) == _hyper_parameters(from_yaml)
    # same weights, same input: the same outputs, bit for bit (the same operations run)
    from_lazy.load_state_dict(s_yaml)
    inputs = [make_input(64, 96, 0, seed=1), make_input(48, 80, 0, seed=2)]
    for x in inputs:
        x["image"] = x["image"].to(torch.uint8)
    with torch.no_grad():
        out_lazy = from_lazy.eval()(inputs)
        out_yaml = from_yaml.eval()(inputs)
    for a, b in zip(out_lazy, out_yaml):
        assert a.keys() == b.keys()
        if "panoptic_seg" in a:
            assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
            assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def test_stage2_frozen_weights_the_lazyconfig_way(tmp_path):
    """``model.frozen_weights=PATH`` makes the LazyConfig stage 2 as MODEL.DETR.FROZEN_WEIGHTS does:
    the body loaded and frozen, masks the only loss, no auxiliary layers."""
    stage1, _ = _models(TOY1)
    path = str(tmp_path / "stage1.pth")
    torch.save({"model": stage1.state_dict()}, path)
    from_lazy, from_yaml = _models(
        TOY2, ["MODEL.DETR.FROZEN_WEIGHTS", path], [f"model.frozen_weights={path}"]
    )
    assert from_lazy.frozen and from_lazy.criterion.losses == ("masks",)
    assert from_lazy.criterion.num_aux_layers == 0
    assert _hyper_parameters(from_lazy) == _hyper_parameters(from_yaml)
    own = from_lazy.state_dict()
    body = [k for k in own if k.startswith("detr.")]  # stage 2 keeps no training-only queries
    assert body and all(torch.equal(own[k], stage1.state_dict()[k]) for k in body)


def test_one_override_changes_every_place_that_needs_it():
    """The facts that must agree inside the config are interpolations: one override."""
    lazy = LazyConfig.load(_paths(TOY1)[0])
    k = lazy.model.detr.num_classes + 3
    lazy = LazyConfig.apply_overrides(
        lazy, [f"model.detr.num_classes={k}", "model.detr.transformer.num_decoder_layers=3"]
    )
    model = instantiate(lazy.model)
    assert model.detr.class_embed.out_features == k + 1
    assert model.criterion.num_classes == k
    assert model.criterion.num_aux_layers == 2
    assert len(model.detr.transformer.decoder_layers) == 3
    assert lazy.dataloader.train.mapper.num_classes == k
    assert lazy.dataloader.evaluator.num_classes == k


def test_saved_lazyconfig_loads_back(tmp_path):
    """default_setup writes the config as config.yaml (LazyConfig.save); it must load back to the
    same model, as --resume and eval-only runs from an output folder need."""
    lazy = LazyConfig.load(_paths(TOY2)[0])
    LazyConfig.save(lazy, str(tmp_path / "config.yaml"))
    again = LazyConfig.load(str(tmp_path / "config.yaml"))
    torch.manual_seed(0)
    a = instantiate(lazy.model)
    torch.manual_seed(0)
    b = instantiate(again.model)
    assert _hyper_parameters(a) == _hyper_parameters(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", [TOY1, "COCO-PanopticSegmentation/detr_R_50_stage1"])
def test_optimizer_and_schedule_as_the_yaml(name):
    py, yml = _paths(name)
    lazy = LazyConfig.load(py)
    cfg = yaml_config(yml, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    lazy.optimizer.params.model = model
    opt_lazy = instantiate(lazy.optimizer)
    opt_yaml = build_detr_optimizer(cfg, model)
    # the same optimizer class (a fresh full-model-clipping subclass per build) and clipping
    assert type(opt_lazy).__name__ == type(opt_yaml).__name__
    assert type(opt_lazy).__bases__ == type(opt_yaml).__bases__
    assert len(opt_lazy.param_groups) == len(opt_yaml.param_groups)
    for g_lazy, g_yaml in zip(opt_lazy.param_groups, opt_yaml.param_groups):
        assert [id(p) for p in g_lazy["params"]] == [id(p) for p in g_yaml["params"]]
        for key in ("lr", "weight_decay", "betas", "eps", "momentum"):
            assert g_lazy.get(key) == g_yaml.get(key), key
    # the lr multiplier, through Detectron2's LRScheduler hook's LRMultiplier
    from detectron2.solver import LRMultiplier

    sched_yaml = build_lr_scheduler(cfg, opt_yaml)
    sched_lazy = LRMultiplier(opt_lazy, instantiate(lazy.lr_multiplier), lazy.train.max_iter)
    for _ in range(0, cfg.SOLVER.MAX_ITER, max(1, cfg.SOLVER.MAX_ITER // 50)):
        assert sched_lazy.get_last_lr() == pytest.approx(sched_yaml.get_last_lr(), rel=1e-12)
        for _ in range(max(1, cfg.SOLVER.MAX_ITER // 50)):
            sched_lazy.step()
            sched_yaml.step()
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER
    assert lazy.train.checkpointer.period == cfg.SOLVER.CHECKPOINT_PERIOD
    assert lazy.train.eval_period == cfg.TEST.EVAL_PERIOD


def test_lazy_config_from_a_users_yaml(tmp_path):
    """A user's own YAML (``_BASE_`` one of ours) gives its LazyConfig too."""
    yml = tmp_path / "mine.yaml"
    yml.write_text(
        f'_BASE_: "{_paths(TOY1)[1]}"\nMODEL:\n  DETR:\n    NUM_OBJECT_QUERIES: 12\n'
        "SOLVER:\n  BASE_LR: 0.0002\n"
    )
    lazy = lazy_config_from_yaml(str(yml))
    assert lazy.model.detr.num_queries == 12
    assert lazy.optimizer.lr == 0.0002
    assert instantiate(lazy.model).detr.query_embed.num_embeddings == 12


@pytest.mark.slow
def test_detectron2s_own_lazyconfig_loop_on_the_toy_twins(tmp_path):
    """A user's pipeline written as Detectron2's tools/lazyconfig_train_net.py is (only Detectron2's
    pieces: SimpleTrainer, DetectionCheckpointer, its hooks, inference_on_dataset) trains the toy
    stage 1, then stage 2 from it, and evaluates PQ with the config's own evaluator."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import SimpleTrainer, create_ddp_model, default_writers, hooks
    from detectron2.evaluation import inference_on_dataset
    from tiny_toy import generate_tiny_toy, tiny_lazy_opts

    toy = generate_tiny_toy(tmp_path / "toy")

    def do_test(cfg, model):
        return inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )

    def do_train(cfg):
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        cfg.optimizer.params.model = model
        optim = instantiate(cfg.optimizer)
        train_loader = instantiate(cfg.dataloader.train)
        # the twin carries the YAML key: DATALOADER.SIZE_GROUPING_PX 0 keeps Detectron2's grouping
        assert cfg.dataloader.train.size_grouping_px == 0
        assert type(train_loader) is AspectRatioGroupedDataset
        model = create_ddp_model(model, **cfg.train.ddp)
        trainer = SimpleTrainer(model, train_loader, optim)
        checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
        trainer.register_hooks(
            [
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
                hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                ),
            ]
        )
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=False)
        trainer.train(0, cfg.train.max_iter)
        return model

    # as loaded, the device is one this machine has (the YAML tools fall back the same way)
    loaded = LazyConfig.load(os.path.join(REPO, "configs", f"{TOY1}.py"))
    assert loaded.train.device == ("cuda" if torch.cuda.is_available() else "cpu")
    cfgs = []
    for stage, extra in (
        (1, []),
        (2, [f"model.frozen_weights={tmp_path / 's1' / 'model_final.pth'}"]),
    ):
        py = os.path.join(REPO, "configs", f"{TOY1 if stage == 1 else TOY2}.py")
        opts = tiny_lazy_opts(tmp_path / f"s{stage}", max_iter=2, toy_root=toy) + extra
        cfg = LazyConfig.apply_overrides(LazyConfig.load(py), opts)
        cfg.train.eval_period = 0
        model = do_train(cfg)
        assert os.path.isfile(tmp_path / f"s{stage}" / "model_final.pth")
        cfgs.append((cfg, model))
    cfg, model = cfgs[1]
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("mask_head.")}
    first = cfgs[0][1].state_dict()
    assert all(torch.equal(v, first[k]) for k, v in body.items())  # stage 2 froze stage 1's body
    results = do_test(cfg, model)
    assert {"PQ", "SQ", "RQ"} <= set(results["panoptic_seg"])
