"""DistributedDataParallel on two processes (gloo, CPU): stage 1 with query groups and denoising
queries, stage 2 (frozen body, masks of the matched queries only), and batches without targets on
one process. Each trains with DDP's ``find_unused_parameters=False`` (a parameter without
gradient would be an error at the next iteration), and both processes hold the same model after
every step, to the bit (parameters and BatchNorm statistics)."""

import json

import pytest
import torch
from tiny_toy import tiny_cfg, write_targetless_panoptic

from detr_panoptic_d2.engine import DetrPanopticTrainer

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU/gloo launch test: with a GPU, launch() uses NCCL"
)
MAX_ITER = 4
STAGE1_QUERIES = ["MODEL.DETR.DN.COPIES", "2", "MODEL.DETR.GROUPS", "2"]


def _train_two_processes(out, toy_root, stage, extra, targetless=None):
    from datetime import timedelta

    from _dist_main import ddp_main  # tests/engine is on sys.path under pytest
    from detectron2.engine import launch

    out.mkdir(parents=True, exist_ok=True)
    args = (str(out), toy_root, stage, MAX_ITER, extra)
    if targetless is not None:
        args += (1, write_targetless_panoptic(targetless))  # rank 1's batches: no target
    launch(ddp_main, 2, dist_url="auto", args=args, timeout=timedelta(minutes=2))
    runs = [json.loads((out / f"ddp_{r}.json").read_text()) for r in range(2)]
    states = [torch.load(out / f"ddp_{r}.pt", weights_only=False) for r in range(2)]
    assert [r["iter"] for r in runs] == [MAX_ITER, MAX_ITER]
    # the same model on both after each step (float64 sum and max of every tensor), and at the
    # end every tensor equal
    assert len(runs[0]["records"]) == MAX_ITER
    for it, (a, b) in enumerate(zip(runs[0]["records"], runs[1]["records"])):
        assert a == b, (it, [k for k in a if a[k] != b[k]][:5])
    assert states[0].keys() == states[1].keys()
    differ = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not differ, differ
    # and it trained: most trainable parameters moved between the first and the last step
    # (buffers such as a frozen body's statistics do not)
    first, last = runs[0]["records"][0], runs[0]["records"][-1]
    trainable = runs[0]["trainable"]
    assert trainable and sum(first[k] != last[k] for k in trainable) >= len(trainable) // 2
    return runs


def _stage1_weights(tmp_path, toy_root):
    """A stage-1 checkpoint (fresh weights) for the stage-2 runs."""
    cfg = tiny_cfg(tmp_path / "s1", toy_root=toy_root, extra=STAGE1_QUERIES)
    path = tmp_path / "stage1.pth"
    torch.save({"model": DetrPanopticTrainer.build_model(cfg).state_dict()}, path)
    return path


@pytest.mark.slow
def test_stage1_with_query_groups_and_denoising(clean_toy, tmp_path):
    runs = _train_two_processes(tmp_path / "out", clean_toy, 1, STAGE1_QUERIES)
    assert all(n > 0 for r in runs for n in r["targets"])


@pytest.mark.slow
def test_stage1_with_a_process_without_targets(clean_toy, tmp_path):
    runs = _train_two_processes(
        tmp_path / "out", clean_toy, 1, STAGE1_QUERIES, targetless=tmp_path / "targetless"
    )
    assert all(n > 0 for n in runs[0]["targets"]) and runs[1]["targets"] == [0] * MAX_ITER


@pytest.mark.slow
@pytest.mark.parametrize("targetless", [False, True], ids=["targets", "one_process_without"])
def test_stage2_frozen_body_masks_of_matched_queries(clean_toy, tmp_path, targetless):
    extra = [
        "MODEL.DETR.FROZEN_WEIGHTS",
        _stage1_weights(tmp_path, clean_toy),
        "MODEL.MASK_HEAD.TRAIN_MATCHED_ONLY",
        "True",
    ]
    runs = _train_two_processes(
        tmp_path / "out", clean_toy, 2, extra, targetless=tmp_path / "t" if targetless else None
    )
    assert all(n > 0 for n in runs[0]["targets"])
    assert runs[1]["targets"] == ([0] * MAX_ITER if targetless else runs[1]["targets"])
    if not targetless:
        assert all(n > 0 for n in runs[1]["targets"])
