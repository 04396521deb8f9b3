"""Export of a ``DetrPanoptic`` model to TorchScript or ONNX, with the ``deploy.json`` the runtime
reads.

    export_model(cfg, model, "onnx", "out/")   # → out/model.onnx, out/deploy.json

Both formats are traced from :class:`PanopticExportWrapper` (``torch.jit.trace``); ONNX is exported
from the traced module with the TorchScript-based exporter (``dynamo=False``) at ``ONNX_OPSET`` with
dynamic height and width, then checked with ``onnx.checker``.
"""

import copy
import logging
import os
import warnings

import numpy as np
import torch

from detr_panoptic_runtime.deploy import FORMAT_VERSION, FORMATS, save_deploy
from detr_panoptic_runtime.outputs import default_colors
from detr_panoptic_runtime.preprocess import preprocess, read_image

from .wrapper import MASK_QUERY_MODES, OUTPUT_NAMES, PanopticExportWrapper

logger = logging.getLogger(__name__)

# 17: LayerNormalization is one ONNX op (TensorRT >= 8.6 parses it as such) and every op here is
# covered.
ONNX_OPSET = 17

__all__ = [
    "ONNX_OPSET",
    "deploy_metadata",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "sample_input",
    "trace_wrapper",
]


def trace_wrapper(wrapper, sample):
    """``torch.jit.trace`` of the wrapper on ``sample`` (3, H, W) uint8, in eval mode and without
    grad.

    Traced with ``keep_all`` set, so that every query takes the mask-head path whatever the sample
    image gives (a trace follows the Python branches that its sample takes); the buffer is then
    cleared in the traced module, which reads it at run time."""
    wrapper = wrapper.eval()
    wrapper.keep_all.fill_(True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            traced = torch.jit.trace(wrapper, (sample,), check_trace=False)
    finally:
        wrapper.keep_all.fill_(False)
    traced.keep_all.fill_(False)
    return traced


def export_torchscript(model, sample, path, mask_queries="kept", input_format="RGB"):
    """Trace ``model`` (a ``DetrPanoptic``) on ``sample`` and save the TorchScript module to
    ``path``. Returns the traced module."""
    wrapper = PanopticExportWrapper(model, mask_queries, input_format=input_format)
    wrapper = wrapper.to(sample.device)
    traced = trace_wrapper(wrapper, sample)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        torch.jit.save(traced, path)
    return traced


def export_onnx(model, sample, path, mask_queries="kept", opset=ONNX_OPSET, input_format="RGB"):
    """Export ``model`` to ONNX at ``path`` (height and width dynamic; with "kept", the number of
    mask rows too), check it with ``onnx.checker``. Returns the loaded ``onnx.ModelProto``."""
    import onnx

    # ONNX Runtime cannot run the mask head's GroupNorm on zero rows: the graph always computes one
    # more
    # mask (of query 0) and drops it (``pad_mask_rows``).
    wrapper = PanopticExportWrapper(
        model, mask_queries, pad_mask_rows=mask_queries == "kept", input_format=input_format
    )
    traced = trace_wrapper(wrapper.to(sample.device), sample)
    dynamic_axes = {
        "image": {1: "height", 2: "width"},
        "mask_logits": {1: "mask_height", 2: "mask_width"},
    }
    if mask_queries == "kept":
        dynamic_axes["mask_logits"][0] = "num_masks"
        dynamic_axes["mask_query_index"] = {0: "num_masks"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            traced,
            (sample,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def sample_input(cfg, sample_image=None, device="cpu"):
    """The tracing input (3, h, w) uint8 RGB: ``sample_image`` (a path) after the test resize, or a
    random 640×480 picture after it. The exported graphs take any size; the sample only drives the
    trace."""
    if sample_image:
        image = read_image(sample_image)
    else:
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x = preprocess(image, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return torch.from_numpy(x).to(device)


def _class_metadata(cfg, num_classes):
    """(class names, colours, data set category id) per contiguous id from DATASETS.TEST[0]'s
    metadata."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
    names, colors, ids = None, None, {}
    if meta is not None:
        for key in ("stuff_classes", "thing_classes"):
            if len(meta.get(key, [])) == num_classes:
                names = list(meta.get(key))
                colors = meta.get(key.replace("classes", "colors"), None)
                break
        for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
            ids.update({c: d for d, c in meta.get(key, {}).items()})
    if names is None:
        names = [f"class_{i}" for i in range(num_classes)]
    if colors is None or len(colors) != num_classes:
        colors = default_colors(num_classes)
    return (
        [str(n) for n in names],
        [[int(v) for v in c] for c in colors],
        [int(ids.get(i, i)) for i in range(num_classes)],
    )


def deploy_metadata(cfg, model, fmt, mask_queries, opset=None, device="cpu"):
    """The ``deploy.json`` dict of an export of ``model`` built from ``cfg``."""
    post = model.postprocessor
    num_classes = cfg.MODEL.DETR.NUM_CLASSES
    is_thing = [bool(v) for v in post.is_thing.tolist()]
    names, colors, dataset_ids = _class_metadata(cfg, num_classes)
    meta = {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "model_file": FORMATS[fmt],
        "device": str(device) if fmt == "torchscript" else "any",
        "input": {"name": "image", "dtype": "uint8", "layout": "CHW", "channels": "RGB"},
        "outputs": list(OUTPUT_NAMES),
        "mask_queries": mask_queries,
        "export_threshold": float(post.object_mask_threshold),
        "num_queries": int(cfg.MODEL.DETR.NUM_OBJECT_QUERIES),
        "num_classes": num_classes,
        "class_names": names,
        "is_thing": is_thing,
        "thing_classes": [i for i, t in enumerate(is_thing) if t],
        "stuff_classes": [i for i, t in enumerate(is_thing) if not t],
        "dataset_category_ids": dataset_ids,
        "colors": colors,
        "test_resize": {
            "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
            "interp": "bilinear",
        },
        "panoptic": {
            "merge": post.merge,
            "threshold": float(post.object_mask_threshold),
            "min_segment_area": int(post.min_segment_area),
            "stuff_merge": post.stuff_merge,
            "overlap_threshold": float(post.overlap_threshold),
        },
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
        "source": {"weights": cfg.MODEL.WEIGHTS, "input_format": cfg.INPUT.FORMAT},
    }
    if fmt == "onnx":
        meta["onnx_opset"] = int(opset or ONNX_OPSET)
    return meta


def export_model(
    cfg, model, fmt, output_dir, sample_image=None, mask_queries="kept", opset=ONNX_OPSET
):
    """Export ``model`` (a ``DetrPanoptic`` built from ``cfg``, weights loaded) to ``output_dir``:
    ``model.ts`` or ``model.onnx``, and ``deploy.json``. Returns (model file path, deploy dict,
    sample).

    Traced on the CPU whatever the model's device (a copy of a model on another device is moved
    there; ``model`` itself stays where it is): the graph creates its tensors from its input and
    its module tensors, so that the file runs on any device (``torch.jit.load(map_location=...)``,
    :class:`detr_panoptic_runtime.ExportedPanopticModel`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if mask_queries not in MASK_QUERY_MODES:
        raise ValueError(f"mask_queries must be one of {MASK_QUERY_MODES}, got {mask_queries!r}")
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT must be RGB or BGR to export, got {cfg.INPUT.FORMAT!r}")
    os.makedirs(output_dir, exist_ok=True)
    model = model.eval()
    if model.device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    device = torch.device("cpu")
    sample = sample_input(cfg, sample_image, device)
    path = os.path.join(output_dir, FORMATS[fmt])
    if fmt == "torchscript":
        export_torchscript(model, sample, path, mask_queries, cfg.INPUT.FORMAT)
    else:
        export_onnx(model, sample, path, mask_queries, opset, cfg.INPUT.FORMAT)
    meta = deploy_metadata(cfg, model, fmt, mask_queries, opset, device)
    save_deploy(meta, output_dir)
    logger.info(f"exported {fmt} to {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return path, meta, sample
