"""Running an exported model (``model.ts`` with torch, or ``model.onnx`` with ONNX Runtime) on
images: the test resize, the graph, and the panoptic post-processing shared with the eager model."""

import os
import warnings

import numpy as np

from .deploy import load_deploy
from .postprocess import panoptic_inference
from .preprocess import preprocess, read_image

__all__ = ["ExportedPanopticModel", "pinned_devices"]


def pinned_devices(module):
    """The devices a TorchScript module's code names as constants (tensors created on a fixed
    device: ``torch.arange(..., device=...)``, ``.to(device)``), sorted.
    ``torch.jit.load(map_location=...)`` moves parameters, buffers and tensor constants, never
    these: a graph that names a device runs on that device only. Exports of this package name none
    (they trace on the CPU, and the model creates its tensors from its inputs and buffers)."""
    devices = set()
    graph = getattr(module, "inlined_graph", None) or module.graph
    blocks = [graph]
    while blocks:
        for node in blocks.pop().nodes():
            blocks.extend(node.blocks())
            if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
                devices.add(str(node.output().toIValue()))
    return sorted(devices)


def _same_device(a, b):
    """Same device type, and the same index where both name one ("cuda" is the current one)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class ExportedPanopticModel:
    """An export folder (``deploy.json`` + model file) as a predictor.

    ``threshold``, ``merge``: override the exported panoptic settings (a "kept" export computes
    masks only for the queries above its export threshold, so a lower threshold is refused).
    ``device``: TorchScript only (default: the CPU): the graph is loaded there
    (``torch.jit.load(map_location=device)``); a graph that names another device in its code (an
    export made before exports traced on the CPU) is refused with the reason. ``threads``: intra-op
    threads of torch / ONNX Runtime (default: theirs). ``providers``: ONNX Runtime execution
    providers (default: CPU).
    """

    def __init__(
        self, folder, device=None, threads=None, threshold=None, merge=None, providers=None
    ):
        self.meta = load_deploy(folder)
        folder = os.path.dirname(folder) if folder.endswith(".json") else folder
        self.path = os.path.join(folder, self.meta["model_file"])
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"model file {self.path} (named by deploy.json) is missing")
        self.format = self.meta["format"]
        pan = dict(self.meta["panoptic"])
        if threshold is not None:
            pan["threshold"] = float(threshold)
        if merge is not None:
            pan["merge"] = merge
        if self.meta["mask_queries"] == "kept" and pan["threshold"] < self.meta["export_threshold"]:
            raise ValueError(
                f"threshold {pan['threshold']} is below the export threshold "
                f"{self.meta['export_threshold']}: queries between the two have no mask; export "
                "again with the lower MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD"
            )
        self.panoptic = pan
        self.is_thing = np.asarray(self.meta["is_thing"], dtype=bool)
        if self.format == "torchscript":
            import torch

            self.torch = torch
            if threads:
                torch.set_num_threads(threads)
            self.device = torch.device(device or "cpu")
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError(f"device {self.device} requested, but CUDA is not available")
            with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(self.path, map_location=self.device).eval()
            pinned = [
                d
                for d in pinned_devices(self.model)
                if not _same_device(torch.device(d), self.device)
            ]
            if pinned:
                raise RuntimeError(
                    f"{self.path} creates tensors on {', '.join(pinned)} in its graph (traced on "
                    f"{self.meta.get('device', '?')}), so it cannot run on {self.device}: "
                    f"run it with device={pinned[0]!r}, or export it again (tools/export_model.py "
                    "traces on the CPU, and its graphs run on any device)"
                )
            self.is_thing_t = torch.as_tensor(self.is_thing, device=self.device)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(
                self.path, options, providers=providers or ["CPUExecutionProvider"]
            )
            self.input_name = self.session.get_inputs()[0].name

    def run_graph(self, image_chw):
        """(3, H, W) uint8 RGB → (pred_logits, pred_boxes, mask_logits, mask_query_index): torch
        tensors (TorchScript) or numpy arrays (ONNX)."""
        image_chw = np.ascontiguousarray(image_chw, dtype=np.uint8)
        if self.format == "torchscript":
            with self.torch.inference_mode():
                x = self.torch.from_numpy(image_chw).to(self.device)
                return tuple(self.model(x))
        return tuple(self.session.run(None, {self.input_name: image_chw}))

    def __call__(self, image_rgb):
        """(H, W, 3) uint8 RGB → (int32 (H, W) segment ids, 0 = void; segments_info), at the image's
        size. segments_info: [{"id", "category_id" (contiguous), "isthing", "score", "area"}]."""
        r = self.meta["test_resize"]
        x = preprocess(image_rgb, r["min_size"], r["max_size"])
        return self.predict_input(x, image_rgb.shape[:2])

    def predict_input(self, x, output_size):
        """The model input (3, h, w) uint8 RGB (already resized) → (ids at ``output_size``,
        segments_info)."""
        logits, boxes, masks, query_index = self.run_graph(x)
        size = tuple(x.shape[-2:])
        pan = self.panoptic
        kwargs = dict(
            threshold=pan["threshold"],
            merge=pan["merge"],
            min_area=pan.get("min_segment_area", 4),
            stuff_merge=pan.get("stuff_merge", "first"),
            overlap_threshold=pan.get("overlap_threshold", 0.8),
        )
        if self.format == "torchscript":
            with self.torch.inference_mode():
                ids, info = panoptic_inference(
                    logits, masks, query_index, self.is_thing_t, size, size, output_size, **kwargs
                )
            return ids.cpu().numpy(), info
        return panoptic_inference(
            logits, masks, query_index, self.is_thing, size, size, output_size, **kwargs
        )

    def predict_file(self, path):
        """Read ``path`` (EXIF orientation applied, RGB) and predict: (image, ids,
        segments_info)."""
        image = read_image(path)
        ids, info = self(image)
        return image, ids, info
