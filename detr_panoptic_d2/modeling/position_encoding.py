"""Sine positional encoding of DETR, computed from the padding mask."""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Normalized 2-D sine/cosine encoding ("Attention is all you need", generalized to images).

    Coordinates are the cumulative count of valid (non-padding) pixels along each axis, normalized
    by the last valid value and scaled to [0, 2*pi]. Output: (B, 2 * num_pos_feats, H, W),
    y-features first.

    The frequencies are a non-persistent float32 buffer (not in checkpoints): they follow the module
    to its device, and a traced graph reads them as a module tensor rather than creating them on
    the device it was traced on (an exported model then runs on any device).
    """

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        self.register_buffer("dim_t", dim_t, persistent=False)

    def forward(self, mask):
        """mask: (B, H, W) bool, True on padding."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = self.dim_t.float()  # float32 under a reduced-precision copy of the weights too
        pos_x = x_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
