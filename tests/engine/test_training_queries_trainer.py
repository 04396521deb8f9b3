"""Query groups and denoising queries through DetrPanopticTrainer: stage 1 trains and checkpoints
the training-only parameters, --resume restores them, and stage 2 (frozen stage-1 weights, mask
head) trains and evaluates PQ from that checkpoint, with or without the options in its config."""

import pytest
import torch

from detr_panoptic_d2.engine import DetrPanopticTrainer
from detr_panoptic_d2.modeling.training_queries import TRAINING_ONLY_PREFIX

OPTIONS = ["MODEL.DETR.GROUPS", "2", "MODEL.DETR.DN.COPIES", "2"]
NO_OPTIONS = ["MODEL.DETR.GROUPS", "1", "MODEL.DETR.DN.COPIES", "0"]


@pytest.mark.slow
def test_stage1_with_options_resume_then_stage2(tiny, tmp_path):
    stage1 = tiny(
        tmp_path / "stage1", max_iter=3, extra=OPTIONS + ["SOLVER.CHECKPOINT_PERIOD", "2"]
    )
    trainer = DetrPanopticTrainer(stage1)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = tmp_path / "stage1" / "model_final.pth"
    saved = torch.load(final, map_location="cpu", weights_only=False)["model"]
    extra = {k: v for k, v in saved.items() if k.startswith(TRAINING_ONLY_PREFIX)}
    assert any("group_query_embed" in k for k in extra) and any(
        "dn_label_embed" in k for k in extra
    )

    # resume from the checkpoint of iteration 1: the training-only parameters come back
    (tmp_path / "stage1" / "last_checkpoint").write_text("model_0000001.pth")
    resumed = DetrPanopticTrainer(stage1)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    at1 = torch.load(
        tmp_path / "stage1" / "model_0000001.pth", map_location="cpu", weights_only=False
    )["model"]
    state = resumed.model.state_dict()
    for k in extra:
        torch.testing.assert_close(state[k], at1[k], rtol=0, atol=0)

    for name, opts in (("with", OPTIONS), ("without", NO_OPTIONS)):
        out = tmp_path / f"stage2_{name}"
        stage2 = tiny(
            out,
            stage=2,
            max_iter=2,
            extra=opts
            + ["MODEL.DETR.FROZEN_WEIGHTS", final, "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.0"],
        )
        t2 = DetrPanopticTrainer(stage2)
        t2.resume_or_load(resume=False)
        t2.train()
        torch.testing.assert_close(
            t2.model.state_dict()["detr.query_embed.weight"], saved["detr.query_embed.weight"]
        )
        results = DetrPanopticTrainer.test(stage2, t2.model)
        assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
