"""The exported graph: one uint8 RGB image (3, H, W) → DETR's per-query outputs.

``PanopticExportWrapper`` runs the eager model's inference functions: the body and mask head
through an :class:`~detr_panoptic_d2.modeling.inference_plan.InferencePlan` (made inside the
traced call, so the graph folds from its own parameters) and the runtime's ``select_queries`` for
the kept queries. Everything data-dependent that follows (mask upsampling, the panoptic merge) runs
outside the graph, in :mod:`detr_panoptic_runtime`, with the same functions as the eager model.
"""

import torch
from torch import nn

from detr_panoptic_runtime.postprocess import select_queries

from ..modeling.inference_plan import InferencePlan

MASK_QUERY_MODES = ("kept", "all")
OUTPUT_NAMES = ("pred_logits", "pred_boxes", "mask_logits", "mask_query_index")


class PanopticExportWrapper(nn.Module):
    """uint8 image (3, H, W), RGB → (pred_logits (N, K+1), pred_boxes (N, 4) normalized cxcywh,
    mask_logits (Q, H/4, W/4), mask_query_index (Q,) int64: the query of each mask row, ascending).

    Normalization (and RGB → BGR for a model trained on BGR) happen inside the graph; the image is
    one unpadded batch of one, so the padding mask is all False, as in the eager model with batch 1.

    ``mask_queries``: "kept" computes masks only for the queries that pass the panoptic selection
    (argmax not no-object and score > ``threshold``), as the eager model does: a data-dependent
    number of rows (``nonzero`` in the graph). "all" computes masks for every query: fixed shapes,
    no ``nonzero``, the mask head's cost for all N queries.

    ``pad_mask_rows`` (ONNX): the mask head always gets at least one row (ONNX Runtime fails on zero
    rows in GroupNorm's reshape): query 0 is appended and its mask dropped, one query's mask head
    cost.

    ``threshold`` and ``keep_all`` are buffers, read by the traced graph at run time: export traces
    with ``keep_all`` True (every query takes the mask-head path, whatever the sample image gives),
    then sets it False (see :func:`detr_panoptic_d2.export.trace_wrapper`).
    """

    def __init__(
        self, model, mask_queries="kept", threshold=None, pad_mask_rows=False, input_format="RGB"
    ):
        super().__init__()
        if mask_queries not in MASK_QUERY_MODES:
            raise ValueError(
                f"mask_queries must be one of {MASK_QUERY_MODES}, got {mask_queries!r}"
            )
        if model.mask_head is None:
            raise ValueError(
                "the model has no mask head (MODEL.MASK_HEAD.NAME): nothing panoptic to export"
            )
        self.detr = model.detr
        self.mask_head = model.mask_head
        self.mask_queries = mask_queries
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().float(), False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().float(), False)
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR to export, got {input_format!r}")
        self.bgr = (
            input_format == "BGR"
        )  # the graph takes RGB; a BGR model gets its channels flipped
        self.pad_mask_rows = pad_mask_rows
        if threshold is None:
            threshold = model.postprocessor.object_mask_threshold
        self.register_buffer("threshold", torch.tensor(float(threshold)), False)
        self.register_buffer("keep_all", torch.tensor(False), False)

    def forward(self, image):
        x = image.float()
        if self.bgr:
            x = x.flip(0)
        x = ((x - self.pixel_mean) / self.pixel_std)[None]
        padding_mask = torch.zeros_like(x[:, 0], dtype=torch.bool)
        plan = InferencePlan(self.detr, torch.float32, mask_head=self.mask_head)
        outputs, features = plan.run_body(self.detr, x, padding_mask)
        logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
        if self.mask_queries == "all":
            # a constant (N is fixed): the mask head's row grouping folds away at export
            queries = torch.arange(self.detr.num_queries, device=logits.device)
        else:
            keep = select_queries(logits, self.threshold)[0]  # graph ops
            queries = (keep | self.keep_all).nonzero()[:, 0]
        rows = queries
        if self.pad_mask_rows:  # one more row (query 0), dropped below: never zero rows in the head
            rows = torch.cat([queries, queries.new_zeros(1)])
        masks = self.mask_head(features, torch.zeros_like(rows), rows, **plan.mask_head_kwargs())
        if self.pad_mask_rows:
            masks = masks[: queries.shape[0]]
        return logits, boxes, masks, queries
