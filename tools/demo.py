#!/usr/bin/env python
"""Run a trained DETR panoptic model on images or videos and write overlays (PNG, mp4).

    python tools/demo.py --config-file CONFIG --input img.jpg dir/ "imgs/*.png" --output out/ \
        [--confidence-threshold T] [--explain] MODEL.WEIGHTS model.pth
    python tools/demo.py --config-file CONFIG --dataset toy_panoptic_val --num 8 --output out/ \
        MODEL.WEIGHTS ...
    python tools/demo.py --config-file CONFIG --video-input clip.mp4 [--output out.mp4 | out/] \
        MODEL.WEIGHTS ...
    python tools/demo.py --config-file CONFIG --webcam MODEL.WEIGHTS ...

--input, --dataset, --video-input and --webcam are mutually exclusive.
--dataset draws each prediction next to the ground truth; --explain also writes, per image, each
kept query's box, multi-head attention maps and mask in one PNG (<name>_queries.png).

Output names: each input's path relative to the common parent folder of all inputs, extension
dropped, under --output (a/1.jpg and b/1.jpg → out/a/1.png and out/b/1.png; one folder's images →
out/<stem>.png); names that differ only by extension keep it (out/1.jpg.png, out/1.png.png).
Images are read as training reads them (EXIF orientation, 16-bit scaled to 8 bits, at most
INPUT.MAX_IMAGE_PIXELS pixels); unreadable files are skipped, named, and make the exit status 1.

--video-input runs the model on each frame (read with OpenCV, BGR, given to the model as
DefaultPredictor gives images: in INPUT.FORMAT) and draws its panoptic segmentation (or its
instances or semantic segmentation, whichever the model outputs) with Detectron2's
VideoVisualizer, in the colours and names of DATASETS.TEST[0]'s metadata. With --output FILE it
writes an mp4 (codec mp4v) of the input's frame count, frame size and fps (--output a folder, or a
path ending in "/": <folder>/<video's stem>.mp4); without --output it shows the frames in a window
(ESC stops). --webcam draws camera 0 (cv2.VideoCapture(0)) the same way, frame by frame, in a
window, until ESC. A video OpenCV cannot open, or one without a readable frame, is an error naming
it (exit status 2 or 1; an output with no frame is removed).
Without CUDA, MODEL.DEVICE falls back to cpu, with a warning.
"""

import argparse
import logging
import os
import sys

import cv2
import numpy as np
import torch
import tqdm
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode

from detr_panoptic_d2 import add_detr_panoptic_config
from detr_panoptic_d2.data import register_datasets_from_cfg
from detr_panoptic_d2.data.dataset_mapper import read_image_file
from detr_panoptic_d2.visualization import (
    draw_ground_truth,
    draw_prediction,
    explain_queries,
    side_by_side,
)
from detr_panoptic_runtime.inputs import list_inputs, output_stems

logger = logging.getLogger("detr_panoptic_d2.demo")
ESC = 27
WEBCAM_WINDOW = "detr-panoptic-d2 webcam"


def setup_cfg(args):
    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        logger.warning(f"MODEL.DEVICE {cfg.MODEL.DEVICE}: CUDA is not available, running on cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def read_frames(capture):
    """Yield the BGR frames of an opened cv2.VideoCapture until it has no more."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def draw_video_frame(visualizer, frame_bgr, predictions):
    """One frame (H, W, 3) uint8 BGR and the model's output for it → (H, W, 3) uint8 BGR picture
    of its panoptic segmentation (else its instances, else its semantic segmentation), drawn by a
    VideoVisualizer (colours of things kept from frame to frame)."""
    rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        vis = visualizer.draw_panoptic_seg_predictions(rgb, panoptic_seg.cpu(), segments_info)
    elif "instances" in predictions:
        vis = visualizer.draw_instance_predictions(rgb, predictions["instances"].to("cpu"))
    elif "sem_seg" in predictions:
        vis = visualizer.draw_sem_seg(rgb, predictions["sem_seg"].argmax(dim=0).cpu())
    else:
        raise ValueError(
            f"the model output has none of panoptic_seg, instances, sem_seg: {sorted(predictions)}"
        )
    picture = np.ascontiguousarray(vis.get_image()[:, :, ::-1])
    h, w = frame_bgr.shape[:2]
    if picture.shape[:2] != (h, w):  # a VideoWriter silently drops frames of another size
        picture = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
    return picture


def visualize_frames(frames, predictor, metadata):
    """Yield the picture (BGR) of each BGR frame of ``frames``: the per-frame loop shared by
    --video-input and --webcam."""
    visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    for frame in frames:
        yield draw_video_frame(visualizer, frame, predictor(frame))


def show_frames(pictures, window):
    """Show each picture in a window until the pictures end or ESC is pressed."""
    cv2.namedWindow(window, cv2.WINDOW_NORMAL)
    try:
        for picture in pictures:
            cv2.imshow(window, picture)
            if cv2.waitKey(1) == ESC:
                break
    finally:
        cv2.destroyAllWindows()


def video_output_path(output, video_path):
    """--output for a video: a folder (existing, or a path ending in a separator) →
    <folder>/<video's stem>.mp4; else the path itself."""
    if os.path.isdir(output) or output.endswith(("/", os.sep)):
        stem = os.path.splitext(os.path.basename(video_path))[0]
        return os.path.join(output, stem + ".mp4")
    return output


def open_video(parser, path):
    """An opened cv2.VideoCapture of ``path``, or a parser error naming it."""
    if not os.path.isfile(path):
        parser.error(f"--video-input {path}: no such file")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        parser.error(f"--video-input {path}: OpenCV cannot open this video")
    return capture


def run_on_video(parser, args, predictor, metadata):
    """--video-input: the pictures of each frame into an mp4 (--output) or a window. Returns the
    exit status."""
    capture = open_video(parser, args.video_input)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        logger.warning(f"{args.video_input}: no frame rate in the file, writing 30 fps")
        fps = 30.0
    num_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    pictures = tqdm.tqdm(
        visualize_frames(read_frames(capture), predictor, metadata),
        total=num_frames if num_frames > 0 else None,
        desc="frames",
    )
    try:
        if args.output is None:
            show_frames(pictures, os.path.basename(args.video_input))
            return 0
        out_path = video_output_path(args.output, args.video_input)
        if os.path.exists(out_path) and os.path.samefile(out_path, args.video_input):
            parser.error(f"--output {out_path} is the input video")
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            print(f"cannot write video {out_path} (mp4v, {width}x{height})", file=sys.stderr)
            return 1
        written = 0
        try:
            for picture in pictures:
                writer.write(picture)
                written += 1
        finally:
            writer.release()
        if written == 0:
            os.remove(out_path)
            print(f"no frame could be read from video {args.video_input}", file=sys.stderr)
            return 1
        print(f"wrote {written} frame(s) to {out_path}")
        return 0
    finally:
        capture.release()


def run_on_webcam(predictor, metadata):
    """--webcam: camera 0, each frame's picture in a window until ESC. Returns the exit status."""
    capture = cv2.VideoCapture(0)
    if not capture.isOpened():
        print("--webcam: OpenCV cannot open camera 0", file=sys.stderr)
        return 1
    try:
        show_frames(visualize_frames(read_frames(capture), predictor, metadata), WEBCAM_WINDOW)
    finally:
        capture.release()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", nargs="+", help="images, folders or glob patterns")
    source.add_argument("--dataset", help="a registered data set: predictions next to ground truth")
    source.add_argument("--video-input", help="a video file: an mp4 of its frames' predictions")
    source.add_argument("--webcam", action="store_true", help="camera 0, shown in a window")
    parser.add_argument("--num", type=int, default=8, help="with --dataset: number of images")
    parser.add_argument(
        "--output",
        help="output folder (images); with --video-input an mp4 file or a folder, else a window",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD (default: the config's)",
    )
    parser.add_argument(
        "--explain", action="store_true", help="also draw each kept query's attention and mask"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    video = args.video_input is not None or args.webcam
    if not (args.input or args.dataset or video):
        parser.error("give either --input or --dataset (images), or --video-input or --webcam")
    if video and args.explain:
        parser.error("--explain works with --input or --dataset only")
    if args.webcam and args.output:
        parser.error("--webcam shows its frames in a window: no --output")
    if not video and not args.output:
        parser.error("--output (a folder) is required with --input or --dataset")
    if args.video_input is not None:
        open_video(parser, args.video_input).release()  # fail early, before the model loads

    setup_logger(name="detr_panoptic_d2")
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:  # as Detectron2's default_setup: a model without weights is reproducible
        seed_all_rng(cfg.SEED)
    register_datasets_from_cfg(cfg)
    if video:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
        predictor = DefaultPredictor(cfg)
        if args.webcam:
            return run_on_webcam(predictor, metadata)
        return run_on_video(parser, args, predictor, metadata)
    dataset_dicts = None
    if args.dataset:
        dataset_dicts = DatasetCatalog.get(args.dataset)[: args.num]
        metadata = MetadataCatalog.get(args.dataset)
        files = [d["file_name"] for d in dataset_dicts]
    else:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
        try:
            files = list_inputs(args.input)
        except FileNotFoundError as e:
            parser.error(str(e))
    predictor = DefaultPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    failed = []
    stems = output_stems(files)
    for i, path in enumerate(tqdm.tqdm(files, disable=len(files) < 2, desc="images")):
        try:  # as training and evaluation read images (PIL, EXIF orientation); errors name the file
            bgr = read_image_file(path, "BGR", cfg.INPUT.MAX_IMAGE_PIXELS)
        except (OSError, ValueError) as e:
            tqdm.tqdm.write(f"skipped: {e}", file=sys.stderr)
            failed.append(path)
            continue
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        pred = predictor(bgr)
        picture = draw_prediction(rgb, pred, metadata)
        if dataset_dicts is not None:
            picture = side_by_side(draw_ground_truth(rgb, dataset_dicts[i], metadata), picture)
        name = os.path.join(args.output, stems[i])
        os.makedirs(os.path.dirname(name), exist_ok=True)
        if not cv2.imwrite(f"{name}.png", picture[:, :, ::-1]):
            raise OSError(f"cannot write {name}.png")
        if args.explain:  # the model's input as DefaultPredictor makes it
            image = rgb if cfg.INPUT.FORMAT == "RGB" else bgr
            image = predictor.aug.get_transform(image).apply_image(image)
            inputs = {"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1))}
            explain_queries(
                predictor.model,
                inputs,
                metadata,
                f"{name}_queries.png",
                input_format=cfg.INPUT.FORMAT,
            )
    print(f"wrote {len(files) - len(failed)} picture(s) to {args.output}")
    if failed:
        print(f"{len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
