"""tools/demo.py --video-input: an mp4 of the overlaid frames, of the input's frame count, size and
frame rate, on a small video the test writes with OpenCV; and clear errors for bad videos and
argument mixes. --webcam shares the per-frame loop (visualize_frames) and cannot run here."""

import cv2
import numpy as np
import pytest
from _cli import STAGE2, run_tool, tiny_opts

pytestmark = pytest.mark.slow

FRAMES, WIDTH, HEIGHT, FPS = 5, 96, 64, 12.0


def _opts(tmp_path, toy_root):
    # a random (untrained, seeded) stage-2 model, keeping every query so that the overlay draws
    # segments
    return tiny_opts(tmp_path / "cfg_out", toy_root=toy_root) + [
        "SEED",
        "0",
        "MODEL.WEIGHTS",
        "",
        "MODEL.DETR.FROZEN_WEIGHTS",
        "",
        "MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD",
        "0.0",
    ]


def _write_video(path, frames=FRAMES):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = np.full((HEIGHT, WIDTH, 3), 40 * i, dtype=np.uint8)
        frame[10:40, 20 + 5 * i : 60 + 5 * i] = rng.integers(0, 256, 3, dtype=np.uint8)
        writer.write(frame)
    writer.release()


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_in_video_out(cli_toy_root, tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(video)
    inputs, _ = _read_video(video)
    out_dir = tmp_path / "vis"
    proc = run_tool(
        "demo.py",
        "--config-file",
        STAGE2,
        "--video-input",
        video,
        "--output",
        f"{out_dir}/",  # a folder: <folder>/<stem>.mp4
        *_opts(tmp_path, cli_toy_root),
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"wrote {FRAMES} frame(s)" in proc.stdout
    frames, fps = _read_video(out_dir / "clip.mp4")
    assert len(frames) == len(inputs) == FRAMES
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    assert fps == pytest.approx(FPS, abs=0.01)
    # the overlay changed the pictures (segments drawn over the frames), beyond mp4 noise
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, inputs)]
    assert min(diffs) > 3.0, diffs


def test_video_errors_name_the_file(cli_toy_root, tmp_path):
    missing = tmp_path / "none.mp4"
    proc = run_tool(
        "demo.py", "--config-file", STAGE2, "--video-input", missing, "--output", tmp_path / "o.mp4"
    )
    assert proc.returncode == 2 and f"{missing}: no such file" in proc.stdout
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    proc = run_tool(
        "demo.py", "--config-file", STAGE2, "--video-input", broken, "--output", tmp_path / "o.mp4"
    )
    assert proc.returncode == 2 and str(broken) in proc.stdout, proc.stdout[-2000:]
    assert not (tmp_path / "o.mp4").exists()
    proc = run_tool("demo.py", "--config-file", STAGE2, "--webcam", "--output", tmp_path / "o")
    assert proc.returncode == 2 and "--webcam" in proc.stdout
    proc = run_tool(
        "demo.py", "--config-file", STAGE2, "--video-input", broken, "--input", tmp_path
    )
    assert proc.returncode == 2 and "not allowed with" in proc.stdout
