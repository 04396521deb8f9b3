"""Two machines without a shared file system, simulated on localhost: two ``tools/train_net.py``
processes with ``--num-machines 2`` and their own ``--machine-rank``, ``OUTPUT_DIR`` and toy data
folder each (one process per "machine", gloo on the CPU): stage 1, stage 2 from each machine's own
stage-1 weights, ``--eval-only``; and ``--resume`` on a machine that lacks the checkpoints."""

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from tiny_toy import REPO, STAGE1, STAGE2, tiny_opts

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU/gloo launch test: with a GPU, launch() uses NCCL"
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_machines(machines, stage_args, timeout=240):
    """Run ``tools/train_net.py`` once per machine at the same time; ``stage_args(root)`` gives
    the arguments of the machine whose folder is ``root``. Returns [(returncode, output)]."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    procs = []
    for rank, root in enumerate(machines):
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "1"]
        cmd += ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url]
        cmd += [str(a) for a in stage_args(root)]
        log = open(root / f"log_{len(list(root.glob('log_*')))}.txt", "w+")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append((log, proc))
    results = []
    for log, proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.seek(0)
        results.append((proc.returncode, log.read()))
        log.close()
    return results


def _opts(root, stage, *extra):
    out = root / f"stage{stage}"
    return [*tiny_opts(out, max_iter=2, toy_root=root / "toy"), *extra]


@pytest.mark.slow
def test_two_machines_without_a_shared_file_system(tmp_path):
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for m in machines:
        m.mkdir()

    def ok(results):
        for rank, (code, out) in enumerate(results):
            assert code == 0, f"machine {rank} exited {code}:\n{out[-6000:]}"
        return results

    ok(_run_machines(machines, lambda m: ["--config-file", STAGE1, *_opts(m, 1)]))
    for m in machines:  # each machine generated its own data and wrote its own checkpoint
        assert (m / "toy" / "meta.json").is_file()
        assert (m / "stage1" / "model_final.pth").is_file()
        json_file = "toy_panoptic_val_instances_from_panoptic.json"
        assert (m / "stage1" / "inference" / "toy_panoptic_val" / json_file).is_file()
    weights = [
        torch.load(m / "stage1" / "model_final.pth", weights_only=False)["model"] for m in machines
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    def stage2(m):
        frozen = m / "stage1" / "model_final.pth"  # this machine's own
        return ["--config-file", STAGE2, *_opts(m, 2, "MODEL.DETR.FROZEN_WEIGHTS", frozen)]

    results = ok(_run_machines(machines, stage2))
    assert "copypaste: PQ" in results[0][1]  # the end-of-training evaluation, on the main process
    for m in machines:
        assert (m / "stage2" / "model_final.pth").is_file()

    def eval_only(m):
        final = m / "stage2" / "model_final.pth"
        return ["--config-file", STAGE2, "--eval-only", *_opts(m, 2, "MODEL.WEIGHTS", final)]

    results = ok(_run_machines(machines, eval_only))
    assert "copypaste: PQ" in results[0][1]

    # a machine without the checkpoints: --resume is an error on both, not a run that trains
    # machine 1 from iteration 0 and machine 0 from its checkpoint
    (machines[1] / "stage1" / "last_checkpoint").unlink()
    results = _run_machines(machines, lambda m: ["--config-file", STAGE1, "--resume", *_opts(m, 1)])
    for rank, (code, out) in enumerate(results):
        assert code != 0, f"machine {rank}:\n{out[-3000:]}"
        assert "would start at different iterations [2, 0]" in out, out[-3000:]
