"""Mixed-precision training (SOLVER.AMP) on the CPU: the step trainer, finite losses,
checkpoints."""

import json

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from detr_test_utils import build_tiny_model, make_input

from detr_panoptic_d2.engine import DetrPanopticTrainer
from detr_panoptic_d2.engine.amp import DetrAMPTrainer, build_step_trainer


def _losses(out_dir):
    metrics = [json.loads(line) for line in open(out_dir / "metrics.json")]
    return [m["total_loss"] for m in metrics if "total_loss" in m]


def test_step_trainer_choice(tiny, tmp_path):
    cfg = tiny(tmp_path, freeze=False)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert type(build_step_trainer(cfg, model, [], opt)) is SimpleTrainer
    cfg.SOLVER.AMP.ENABLED = True
    trainer = build_step_trainer(cfg, model, [], opt)
    assert isinstance(trainer, DetrAMPTrainer)
    assert trainer.precision == torch.bfloat16 and trainer.device_type == "cpu"
    assert not trainer.grad_scaler.is_enabled()  # bf16: no gradient scaling
    cfg.SOLVER.AMP.PRECISION = "float16"  # on the CPU too (slow there: a warning)
    trainer = build_step_trainer(cfg, model, [], opt)
    assert trainer.precision == torch.float16 and trainer.grad_scaler.is_enabled()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        DetrAMPTrainer(model, [], opt, precision=torch.float64, device_type="cpu")


def test_amp_step_autocasts_and_updates():
    """One DetrAMPTrainer step on the CPU: the forward runs in bf16, the loss is finite, weights
    move."""
    model = build_tiny_model().train()
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = DetrAMPTrainer(model, [batch], opt, precision=torch.bfloat16, device_type="cpu")
    seen = []
    model.detr.input_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = model.detr.class_embed.weight.detach().clone()
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.storage = storage
        trainer.run_step()
    assert seen == [torch.bfloat16]
    assert not torch.equal(before, model.detr.class_embed.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.detr.class_embed.weight.dtype == torch.float32  # master weights stay float32
    state = trainer.state_dict()
    assert "grad_scaler" in state
    trainer.load_state_dict({k: v for k, v in state.items() if k != "grad_scaler"})


def _fp16_steps(model, batches):
    """DetrAMPTrainer steps in float16 on the CPU: (total loss of each step, dtypes seen, scales,
    the trainer)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer = DetrAMPTrainer(model, batches, opt, precision=torch.float16, device_type="cpu")
    assert trainer.grad_scaler.is_enabled()
    # The default initial scale (2^16) halves on each step whose scaled gradients overflow: on the
    # tiny model 7 steps are skipped before it settles at 2^9. A test starts at 2^8.
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    seen, scales = [], []
    model.detr.input_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    totals = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(len(batches)):
            trainer.iter = storage.iter = it
            trainer.run_step()
            totals.append(storage.history("total_loss").latest())
            scales.append(trainer.grad_scaler.get_scale())
    return totals, seen, scales, trainer


def test_fp16_amp_steps_on_cpu_stage1_with_denoising_and_groups():
    """float16 autocast with the gradient scaler on the CPU: finite losses, the body in float16,
    the heads, matcher and losses in float32 (autocast off there), the weights updated."""
    model = build_tiny_model(**{"MODEL.DETR.GROUPS": 2, "MODEL.DETR.DN.COPIES": 2}).train()
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    head_dtypes = []
    model.detr.class_embed.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    model.detr.bbox_embed.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    before = model.detr.class_embed.weight.detach().clone()
    totals, seen, scales, trainer = _fp16_steps(model, [batch] * 3)
    assert seen == [torch.float16] * 3
    assert set(head_dtypes) == {torch.float32}
    assert trainer.grad_scaler.is_enabled() and all(s > 0 for s in scales)
    assert len(totals) == 3 and all(torch.isfinite(torch.tensor(totals)))
    assert not torch.equal(before, model.detr.class_embed.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.detr.class_embed.weight.dtype == torch.float32


def test_fp16_amp_steps_on_cpu_stage2_mask_losses_in_float32(tmp_path):
    """Stage 2 in float16 autocast: the mask logits and the focal / dice losses are float32 (a
    float16 dice sums over every pixel, which overflows at 65504 on real image sizes)."""
    path = tmp_path / "stage1.pth"
    torch.save({"model": build_tiny_model().state_dict()}, path)
    model = build_tiny_model(
        mask_head=True, seed=1, **{"MODEL.DETR.FROZEN_WEIGHTS": str(path)}
    ).train()
    batch = [make_input(64, 96, 2), make_input(96, 64, 1, seed=1)]
    mask_dtypes, loss_dtypes = [], []
    model.mask_head.register_forward_hook(lambda m, i, o: mask_dtypes.append(o.dtype))
    crit = model.criterion.forward

    def criterion(*args, **kwargs):
        losses, metrics = crit(*args, **kwargs)
        loss_dtypes.extend(v.dtype for v in losses.values())
        return losses, metrics

    model.criterion.forward = criterion
    before = model.mask_head.mask_head.out_lay.weight.detach().clone()
    totals, seen, scales, _ = _fp16_steps(model, [batch] * 3)
    assert set(mask_dtypes) == {torch.float32} and set(loss_dtypes) == {torch.float32}
    assert all(torch.isfinite(torch.tensor(totals)))
    assert not torch.equal(before, model.mask_head.mask_head.out_lay.weight)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_amp_training_on_cpu_finite_and_close_to_fp32(tiny, tmp_path, stage):
    extra = []
    if stage == 2:  # a stage-1 checkpoint to freeze
        first = DetrPanopticTrainer(tiny(tmp_path / "s1", max_iter=1))
        first.resume_or_load(resume=False)
        first.train()
        extra = ["MODEL.DETR.FROZEN_WEIGHTS", str(tmp_path / "s1" / "model_final.pth")]
    losses = {}
    for amp in (False, True):
        out = tmp_path / f"amp_{amp}"
        cfg = tiny(
            out,
            stage=stage,
            max_iter=4,
            extra=extra + ["SOLVER.AMP.ENABLED", str(amp), "SEED", "3"],
        )
        seed_all_rng(3)  # as default_setup does: same initialization, noise and data order
        trainer = DetrPanopticTrainer(cfg)
        assert isinstance(trainer._trainer, DetrAMPTrainer) is amp
        trainer.resume_or_load(resume=False)
        trainer.train()
        losses[amp] = _losses(out)
        assert (out / "model_final.pth").is_file()
    assert len(losses[True]) == len(losses[False]) > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[True])
    # same data and initialization: bf16 losses follow the float32 ones (first iteration: same
    # weights)
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_follows_the_device(tiny, tmp_path, monkeypatch, native):
    """SOLVER.AMP.AUTO: bfloat16 autocast where bf16 training wins on the device, float32
    elsewhere; SOLVER.AMP.ENABLED still forces it on; AUTO with float16 is refused."""
    import detr_panoptic_d2.engine.amp as amp

    asked = []
    monkeypatch.setattr(
        amp, "bf16_training_wins", lambda device_type: asked.append(device_type) or native
    )
    cfg = tiny(tmp_path, freeze=False)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg.SOLVER.AMP.AUTO = True
    trainer = build_step_trainer(cfg, model, [], opt)
    assert asked == ["cpu"]
    if native:
        assert isinstance(trainer, DetrAMPTrainer) and trainer.precision == torch.bfloat16
    else:
        assert type(trainer) is SimpleTrainer
    cfg.SOLVER.AMP.ENABLED = True
    assert isinstance(build_step_trainer(cfg, model, [], opt), DetrAMPTrainer)
    cfg.SOLVER.AMP.ENABLED = False
    cfg.SOLVER.AMP.PRECISION = "float16"
    with pytest.raises(ValueError, match="bfloat16"):
        build_step_trainer(cfg, model, [], opt)


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    """bf16_is_fast: AVX512-BF16 or AMX tiles make a CPU native; plain AVX-512 (what oneDNN's
    own bf16 check accepts, converting through float32) does not."""
    from detr_panoptic_d2.modeling.inference_opt import bf16_is_fast

    for avx512_bf16, amx, expected in [
        (True, False, True),
        (False, True, True),
        (False, False, False),
    ]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bf16_is_fast("cpu") is expected
    assert bf16_is_fast("mps") is False
    if not torch.cuda.is_available():
        assert bf16_is_fast("cuda") is False


def test_bf16_training_wins_on_amx_only(monkeypatch):
    """AMP auto's CPU rule: AMX tiles, not AVX512-BF16 alone (the toy recipe's measurement)."""
    from detr_panoptic_d2.engine.amp import bf16_training_wins

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bf16_training_wins("cpu") is amx
    assert bf16_training_wins("mps") is False
