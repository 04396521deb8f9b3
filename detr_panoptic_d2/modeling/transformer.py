"""DETR's encoder-decoder transformer (post-norm by default, pre-norm option).

Positional encodings are added to queries and keys at every attention layer, as in the original
DETR. Sequences are (L, B, C) as in ``torch.nn.MultiheadAttention``'s default layout.

Attention weights are never read. Where each attention runs (:func:`_explicit_attention`):

* inference, on any device: PyTorch's fused scaled-dot-product attention (``need_weights=False``);
* training on CUDA and other accelerators: the fused attention too, which keeps O(B·L·C) for
  backward instead of the B·H·L² attention matrices;
* training on the CPU: the explicit path (``need_weights=True``).

Both paths compute the same function (equal up to float rounding).
"""

import copy

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .checks import check_arg, check_int


def _with_pos(x, pos):
    return x if pos is None else x + pos


def _explicit_attention(attn, query):
    """Whether ``attn`` takes the explicit path (attention weights computed, and kept for backward)
    rather than the fused kernel: in training on the CPU only."""
    # Measured on 2 CPU cores: at inference the fused kernel is faster (R-50 encoder-decoder at
    # 800x1088: 0.48 -> 0.33 s); in training it is not: under bf16 autocast with dropout it falls
    # back to a slower kernel (toy stage-1 step 0.27 vs 0.18 s), and in float32 one attention's
    # forward + backward on 1 thread takes 2.2 vs 1.6 ms (toy size, L 20, B 8, C 128) and 42 vs
    # 40 ms (L 300, B 2, C 256).
    return attn.training and query.device.type == "cpu"


def _attend(attn, query, key, value, **masks):
    """``attn``'s output alone; its weights are computed only on the explicit path."""
    return attn(query, key, value, need_weights=_explicit_attention(attn, query), **masks)[0]


def _clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src, src_key_padding_mask=None, pos=None):
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src = src + self.dropout1(
                _attend(self.self_attn, q, k, src2, key_padding_mask=src_key_padding_mask)
            )
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src2 = _attend(self.self_attn, q, k, src, key_padding_mask=src_key_padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None, tgt_mask=None
    ):
        """tgt_mask: optional bool self-attention mask, True where a query may not attend a query
        (training-only query groups and denoising queries); None at inference, as DETR."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(_attend(self.self_attn, q, k, tgt2, attn_mask=tgt_mask))
            tgt2 = self.norm2(tgt)
            tgt2 = _attend(
                self.multihead_attn,
                _with_pos(tgt2, query_pos),
                _with_pos(memory, pos),
                memory,
                key_padding_mask=memory_key_padding_mask,
            )
            tgt = tgt + self.dropout2(tgt2)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(
            tgt + self.dropout1(_attend(self.self_attn, q, k, tgt, attn_mask=tgt_mask))
        )
        tgt2 = _attend(
            self.multihead_attn,
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
        )
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class Transformer(nn.Module):
    """Encoder over the projected image features, decoder over learned object queries.

    forward() returns the decoder outputs of every layer, (num_dec_layers, B, N, C), each passed
    through the shared final decoder LayerNorm, and the encoded image ("memory"), (B, C, H, W).
    """

    @configurable
    def __init__(
        self,
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
    ):
        super().__init__()
        name = "Transformer"
        check_int(name, "d_model", "MODEL.DETR.HIDDEN_DIM", d_model, 1)
        check_int(name, "nhead", "MODEL.DETR.NHEADS", nhead, 1)
        check_int(name, "num_encoder_layers", "MODEL.DETR.ENC_LAYERS", num_encoder_layers, 0)
        check_int(name, "num_decoder_layers", "MODEL.DETR.DEC_LAYERS", num_decoder_layers, 1)
        check_int(name, "dim_feedforward", "MODEL.DETR.DIM_FEEDFORWARD", dim_feedforward, 1)
        check_arg(
            d_model % nhead == 0,
            name,
            "d_model",
            "MODEL.DETR.HIDDEN_DIM",
            d_model,
            f"a multiple of MODEL.DETR.NHEADS={nhead}",
        )
        check_arg(0.0 <= dropout < 1.0, name, "dropout", "MODEL.DETR.DROPOUT", dropout, "in [0, 1)")
        enc = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        dec = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.encoder_layers = _clones(enc, num_encoder_layers)
        # The encoder ends with a LayerNorm only in the pre-norm variant; the decoder always does.
        self.encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.decoder_layers = _clones(dec, num_decoder_layers)
        self.decoder_norm = nn.LayerNorm(d_model)
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @classmethod
    def from_config(cls, cfg):
        """Keyword arguments from ``cfg.MODEL.DETR``."""
        d = cfg.MODEL.DETR
        return {
            "d_model": d.HIDDEN_DIM,
            "nhead": d.NHEADS,
            "num_encoder_layers": d.ENC_LAYERS,
            "num_decoder_layers": d.DEC_LAYERS,
            "dim_feedforward": d.DIM_FEEDFORWARD,
            "dropout": d.DROPOUT,
            "normalize_before": d.PRE_NORM,
        }

    def forward(self, src, mask, query_embed, pos_embed, tgt=None, query_mask=None):
        """src: (B, C, H, W); mask: (B, H, W) True on padding; query_embed: (N, C), or (N, B, C)
        per image; pos_embed: like src. Training-only queries (query groups, denoising) add
        ``tgt``: (N, B, C), the decoder's initial content (zeros when None, as DETR), and
        ``query_mask``: (N, N) or (B, N, N) bool, True where a query may not attend a query in the
        decoder's self-attention."""
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        if query_embed.dim() == 2:
            query_pos = query_embed.unsqueeze(1).repeat(1, bs, 1)  # (N, B, C)
        else:
            query_pos = query_embed
        if query_mask is not None and query_mask.dim() == 3:  # per image → per image and head
            query_mask = query_mask.repeat_interleave(self.nhead, dim=0)
        mask = mask.flatten(1)  # (B, HW)

        memory = src
        for layer in self.encoder_layers:
            memory = layer(memory, src_key_padding_mask=mask, pos=pos_embed)
        if self.encoder_norm is not None:
            memory = self.encoder_norm(memory)

        out = torch.zeros_like(query_pos) if tgt is None else tgt
        intermediate = []
        for layer in self.decoder_layers:
            out = layer(
                out,
                memory,
                memory_key_padding_mask=mask,
                pos=pos_embed,
                query_pos=query_pos,
                tgt_mask=query_mask,
            )
            intermediate.append(self.decoder_norm(out))
        hs = torch.stack(intermediate)  # (L, N, B, C)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)
