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
    with pytest.raises(ValueError, match="float16"):
        DetrAMPTrainer(model, [], opt, precision=torch.float16, device_type="cpu")


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
