"""A real non-finite weight during training: the next step is a FloatingPointError naming the
iteration and the first non-finite output, raised before the matcher (scipy) sees it; the last
checkpoint written before it stays on disk, finite, and loads."""

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.modeling import build_model

from detr_panoptic_d2.checkpoint import DetrCheckpointer
from detr_panoptic_d2.engine import DetrPanopticTrainer


class PoisonWeight(HookBase):
    """After step ``at`` (after the checkpointer's hook), sets one element of the parameter
    ``name`` to ``value``."""

    def __init__(self, name, value, at):
        self.name, self.value, self.at = name, value, at

    def after_step(self):
        if self.trainer.iter == self.at:
            param = dict(self.trainer.model.named_parameters())[self.name]
            with torch.no_grad():
                param.view(-1)[0] = self.value


@pytest.mark.parametrize(
    "name,value,output",
    [
        ("detr.class_embed.weight", float("nan"), "pred_logits"),
        ("detr.bbox_embed.layers.2.weight", float("nan"), "pred_boxes"),  # logits stay finite
        ("detr.backbone.res4.1.conv2.weight", float("inf"), "pred_logits"),
    ],
)
def test_nonfinite_weight_raises_naming_iteration_and_output(tiny, tmp_path, name, value, output):
    k = 1  # the checkpoint of iteration 1 (period 2), then the weight goes bad
    cfg = tiny(tmp_path, max_iter=6, extra=["SOLVER.CHECKPOINT_PERIOD", "2"])
    trainer = DetrPanopticTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([PoisonWeight(name, value, at=k)])
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    msg = str(e.value)
    assert f"Model output {output} is infinite or NaN at iteration={k + 1}" in msg, msg
    assert not (tmp_path / "model_final.pth").exists()
    assert not (tmp_path / f"model_{k + 1:07d}.pth").exists()
    good = tmp_path / f"model_{k:07d}.pth"
    assert good.is_file() and (tmp_path / "last_checkpoint").read_text() == good.name
    ckpt = torch.load(good, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == k
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    model = build_model(cfg).eval()
    DetrCheckpointer(model).load(str(good))  # a complete checkpoint: loads in eval mode
    torch.testing.assert_close(
        dict(model.named_parameters())[name], ckpt["model"][name], rtol=0, atol=0
    )
