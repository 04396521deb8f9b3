"""Training-only decoder queries: grouped one-to-many queries (Group DETR) and denoising queries
(DN-DETR), with the self-attention mask that keeps them from DETR's own queries.

They exist only while the DETR body trains. At inference, and in stage 2 (whose DETR body is
frozen in eval mode), the decoder sees DETR's ``NUM_OBJECT_QUERIES`` queries alone, without a
mask: the model is DETR, and its outputs do not depend on these options.

The decoder's query axis in training::

    [ group 0: DETR's N | group 1 | ... | group G-1 | dn copy 0: P slots | ... | dn copy D-1 ]

* Query groups (``groups`` G > 1). Group g >= 1 has its own N learned positional queries and,
  as DETR's, zero content. A query attends only to the queries of its own group, so each group
  is DETR on its own; each group is matched one-to-one with the targets, which gives every
  target G positive queries.
* Denoising queries (``dn_copies`` D > 0). Each copy has one slot per target of the image (P:
  the batch's largest target count, at least 1; the slots past an image's count are padding).
  The slot of target j carries the target's label, replaced by a random class with probability
  ``label_noise_ratio``, as content (a label embedding; padding slots use its extra "unknown"
  row), and the target's box with DN-DETR's noise (centre moved by up to ``box_noise_scale`` x
  half the width / height, width and height changed by up to ``box_noise_scale`` x themselves,
  clamped to [0, 1]) as positional query. DETR's positional queries are free vectors, not
  boxes, so the box enters through a learned MLP of its sine embedding (as DAB-DETR and DN-DETR
  turn anchor boxes into positional queries). The slot is trained to give back the target (its
  class and box, no matching). A dn query attends to the queries of its own copy and to DETR's
  queries (group 0); no matching query (of any group) attends to a dn query, copies do not
  attend to each other, and a padding slot is attended to by no query but itself.

Checkpoints. The training-only parameters (``detr.training_queries.*``) are saved with the
model, so that ``--resume`` restores them. A checkpoint without them (an official DETR
checkpoint, converted, or one trained without the options) loads strictly into a model with the
options: they keep their initialization (:meth:`TrainingQueries._load_from_state_dict`), as does
a training-only tensor of another shape (another group count or class count). A checkpoint with
them loads strictly into a model without the options: the DETR body registers
``training_queries`` as an empty submodule, whose keys are ignored.
"""

import logging
import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from .checks import check_arg, check_int

logger = logging.getLogger(__name__)

# Prefix of the training-only parameters in the model's state dict.
TRAINING_ONLY_PREFIX = "detr.training_queries."


class QueryBatch(NamedTuple):
    """The decoder inputs of one training batch and the layout of its query axis."""

    query_pos: torch.Tensor  # (Q, B, C) positional queries
    tgt: torch.Tensor  # (Q, B, C) initial content (zeros for the matching queries)
    attn_mask: torch.Tensor  # (Q, Q) or (B, Q, Q) bool, True: may not attend
    num_queries: int  # N, DETR's queries (group 0)
    groups: int  # G, matching query groups (group 0 included)
    dn_copies: int  # D
    dn_slots: int  # P, slots per copy (0 without denoising)
    dn_valid: Optional[torch.Tensor]  # (B, P) bool, False on padding slots
    dn_labels: Optional[torch.Tensor]  # (B, D * P) noised labels, num_classes on padding
    dn_boxes: Optional[torch.Tensor]  # (B, D * P, 4) noised cxcywh boxes, zeros on padding


def _rng_device(tensor, generator):
    """Where the noise is drawn: on ``generator``'s device when one is given (a generator draws on
    its own device only), else on the tensor's (no host draw and copy per step on a GPU)."""
    return tensor.device if generator is None else generator.device


def noise_boxes(boxes, scale, generator=None):
    """DN-DETR's box noise. boxes: (..., 4) normalized cxcywh. The centre moves by a uniform amount
    in [-scale, scale] x (w/2, h/2), width and height change by [-scale, scale] x (w, h); the result
    is clamped to [0, 1]."""
    if scale <= 0:
        return boxes.clone()
    wh = boxes[..., 2:]
    span = torch.cat([wh / 2, wh], dim=-1)
    u = torch.rand(
        boxes.shape, generator=generator, dtype=boxes.dtype, device=_rng_device(boxes, generator)
    )
    u = u.to(boxes.device) * 2 - 1
    return (boxes + u * span * scale).clamp(0.0, 1.0)


def noise_labels(labels, ratio, num_classes, generator=None):
    """DN-DETR's label noise: each label is replaced, with probability ``ratio``, by a class drawn
    uniformly from [0, num_classes) (which may be the same class)."""
    if ratio <= 0:
        return labels.clone()
    device = _rng_device(labels, generator)
    flip = torch.rand(labels.shape, generator=generator, device=device).to(labels.device) < ratio
    other = torch.randint(0, num_classes, labels.shape, generator=generator, device=device)
    other = other.to(labels)
    return torch.where(flip, other, labels)


def box_sine_embedding(boxes, num_feats, temperature=10000):
    """(..., 4) boxes in [0, 1] → (..., 4 * num_feats): for each coordinate, sines and cosines of
    2π · coordinate at the frequencies of DETR's sine positional encoding."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = boxes.float()[..., None] * (2 * math.pi) / dim_t  # (..., 4, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2).to(boxes.dtype)


def training_query_mask(num_queries, groups, dn_copies=0, dn_slots=0, dn_valid=None, device=None):
    """The decoder self-attention mask of the training query layout (module docstring): bool, True
    where query i (row) may not attend query j (column).

    Returns (Q, Q), Q = groups * num_queries + dn_copies * dn_slots; or (B, Q, Q) when
    ``dn_valid`` (B, dn_slots) is given (with denoising): False marks padding slots, whose keys are
    then hidden from every query but themselves. Pass None when no slot is padding (the caller
    knows it from the target counts, without a host sync)."""
    n_match = groups * num_queries
    total = n_match + dn_copies * dn_slots
    idx = torch.arange(total, device=device)
    # block id: matching group g → g; dn copy c → groups + c
    block = torch.where(
        idx < n_match,
        idx // num_queries,
        groups + (idx - n_match) // max(dn_slots, 1),
    )
    blocked = block[:, None] != block[None, :]
    is_dn = idx >= n_match
    blocked &= ~(is_dn[:, None] & (idx < num_queries)[None, :])  # dn queries see group 0
    if dn_valid is None or dn_copies == 0:
        return blocked
    pad_key = torch.cat(
        [
            torch.zeros(dn_valid.shape[0], n_match, dtype=torch.bool, device=device),
            ~dn_valid.to(device).repeat(1, dn_copies),
        ],
        dim=1,
    )  # (B, Q)
    eye = torch.eye(total, dtype=torch.bool, device=device)
    return (blocked[None] | pad_key[:, None, :]) & ~eye


def check_training_query_args(groups, dn_copies, box_noise_scale=0.4, label_noise_ratio=0.2):
    """:class:`TrainingQueries`' arguments, each a ``ValueError`` naming its key when bad."""
    name = "TrainingQueries"
    check_int(name, "groups", "MODEL.DETR.GROUPS", groups, 1)
    check_int(name, "dn_copies", "MODEL.DETR.DN.COPIES", dn_copies, 0)
    check_arg(
        box_noise_scale >= 0,
        name,
        "box_noise_scale",
        "MODEL.DETR.DN.BOX_NOISE_SCALE",
        box_noise_scale,
        ">= 0",
    )
    check_arg(
        0.0 <= label_noise_ratio <= 1.0,
        name,
        "label_noise_ratio",
        "MODEL.DETR.DN.LABEL_NOISE_RATIO",
        label_noise_ratio,
        "in [0, 1]",
    )


def wants_training_queries(groups, dn_copies, box_noise_scale=0.4, label_noise_ratio=0.2):
    """Whether ``MODEL.DETR.GROUPS`` / ``MODEL.DETR.DN.*`` ask for :class:`TrainingQueries`
    (their values checked, also when they ask for none)."""
    check_training_query_args(groups, dn_copies, box_noise_scale, label_noise_ratio)
    return groups > 1 or dn_copies > 0


class TrainingQueries(nn.Module):
    """The training-only queries of a DETR body: ``groups - 1`` extra query groups and ``dn_copies``
    denoising copies (either may be off: groups=1, dn_copies=0). See the module docstring."""

    def __init__(
        self,
        hidden_dim,
        num_queries,
        num_classes,
        groups=1,
        dn_copies=0,
        box_noise_scale=0.4,
        label_noise_ratio=0.2,
    ):
        super().__init__()
        check_training_query_args(groups, dn_copies, box_noise_scale, label_noise_ratio)
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.groups = groups
        self.dn_copies = dn_copies
        self.box_noise_scale = box_noise_scale
        self.label_noise_ratio = label_noise_ratio
        self.group_query_embed = (
            nn.Embedding((groups - 1) * num_queries, hidden_dim) if groups > 1 else None
        )
        if dn_copies > 0:
            # one row per class and an "unknown" row (index num_classes) for padding slots
            self.dn_label_embed = nn.Embedding(num_classes + 1, hidden_dim)
            self.dn_box_embed = nn.Sequential(
                nn.Linear(2 * hidden_dim, hidden_dim),
                nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim),
            )
        else:
            self.dn_label_embed = self.dn_box_embed = None

    def extra_repr(self):
        return (
            f"groups={self.groups}, dn_copies={self.dn_copies}, "
            f"box_noise_scale={self.box_noise_scale}, label_noise_ratio={self.label_noise_ratio}"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Training-only tensors absent from the checkpoint, or of another shape, keep their current
        # values: an official / inference checkpoint loads strictly into a model with the options.
        kept = []
        for name, value in self.state_dict().items():
            key = prefix + name
            if key not in state_dict or tuple(state_dict[key].shape) != tuple(value.shape):
                kept.append(key)
                state_dict[key] = value.detach().clone()
        if kept:
            logger.info(
                "Training-only query parameters not in the checkpoint (or of another shape) keep "
                f"their initialization: {', '.join(kept)}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _dn_inputs(self, targets, batch_size, device):
        """Noised labels (B, D*P) and boxes (B, D*P, 4), validity (B, P) and P."""
        counts = [len(t["labels"]) for t in targets]
        slots = max([1, *counts])
        labels = torch.full((batch_size, slots), self.num_classes, dtype=torch.int64, device=device)
        boxes = torch.zeros(batch_size, slots, 4, device=device)
        valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)
        for b, (t, n) in enumerate(zip(targets, counts)):
            labels[b, :n] = t["labels"].to(device)
            boxes[b, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
            valid[b, :n] = True
        d = self.dn_copies
        labels = labels.repeat(1, d)  # (B, D*P): copy c, slot j at c * P + j
        boxes = boxes.repeat(1, d, 1)
        valid_d = valid.repeat(1, d)
        noisy_labels = noise_labels(labels, self.label_noise_ratio, self.num_classes)
        noisy_boxes = noise_boxes(boxes, self.box_noise_scale)
        labels = torch.where(valid_d, noisy_labels, labels)
        boxes = torch.where(valid_d[..., None], noisy_boxes, boxes)
        return labels, boxes, valid, slots

    def forward(self, query_embed, targets, batch_size):
        """query_embed: (N, C), DETR's positional queries; targets: per image "labels" (T,) and
        "boxes" (T, 4) normalized cxcywh (may be None without denoising). Returns a
        :class:`QueryBatch`."""
        n, c = query_embed.shape
        device = query_embed.device
        pos = query_embed
        if self.group_query_embed is not None:
            pos = torch.cat([pos, self.group_query_embed.weight], dim=0)
        query_pos = pos.unsqueeze(1).repeat(1, batch_size, 1)  # (G*N, B, C)
        tgt = torch.zeros_like(query_pos)
        dn_slots, dn_valid, dn_labels, dn_boxes = 0, None, None, None
        if self.dn_copies > 0:
            if targets is None:
                raise ValueError("denoising queries need the targets")
            dn_labels, dn_boxes, dn_valid, dn_slots = self._dn_inputs(targets, batch_size, device)
            content = self.dn_label_embed(dn_labels).to(query_pos.dtype)  # (B, D*P, C)
            dn_pos = self.dn_box_embed(box_sine_embedding(dn_boxes, c // 2)).to(query_pos.dtype)
            query_pos = torch.cat([query_pos, dn_pos.transpose(0, 1)], dim=0)
            tgt = torch.cat([tgt, content.transpose(0, 1)], dim=0)
        # no padding slot (every image has P targets, known on the host): the (Q, Q) mask, without
        # asking the device whether dn_valid is all True
        full = targets is None or all(len(t["labels"]) == dn_slots for t in targets)
        mask_valid = None if full else dn_valid
        mask = training_query_mask(n, self.groups, self.dn_copies, dn_slots, mask_valid, device)
        return QueryBatch(
            query_pos,
            tgt,
            mask,
            n,
            self.groups,
            self.dn_copies,
            dn_slots,
            dn_valid,
            dn_labels,
            dn_boxes,
        )


def split_training_outputs(outputs_class, outputs_coord, batch):
    """Per-layer class logits and boxes (L, B, Q, ·) of the whole training query axis → DETR's
    outputs (the first N queries) and the training-only entries ``"group_outputs"`` /
    ``"dn_outputs"``, each a dict of "pred_logits" and "pred_boxes" of the last layer and
    "aux_outputs" of the earlier ones.

    Returns (main_class, main_coord, extra): main_* are (L, B, N, ·); extra holds the entries that
    are on. "group_outputs" also holds "groups" (G - 1); "dn_outputs" holds "dn_copies" and
    "dn_valid" (B, P)."""
    n, g = batch.num_queries, batch.groups

    def entry(cls, box):
        return {
            "pred_logits": cls[-1],
            "pred_boxes": box[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(cls[:-1], box[:-1])
            ],
        }

    extra = {}
    if g > 1:
        extra["group_outputs"] = {
            **entry(outputs_class[:, :, n : g * n], outputs_coord[:, :, n : g * n]),
            "groups": g - 1,
        }
    if batch.dn_copies > 0:
        extra["dn_outputs"] = {
            **entry(outputs_class[:, :, g * n :], outputs_coord[:, :, g * n :]),
            "dn_copies": batch.dn_copies,
            "dn_valid": batch.dn_valid,
        }
    return outputs_class[:, :, :n], outputs_coord[:, :, :n], extra
