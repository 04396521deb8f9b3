"""PositionEmbeddingSine against a per-pixel hand computation."""

import math

import pytest
import torch

from detr_panoptic_d2.modeling import PositionEmbeddingSine


def encoding_by_hand(
    mask, num_feats, temperature=10000.0, normalize=True, scale=2 * math.pi, eps=1e-6
):
    """(B, 2F, H, W) with python floats: coordinates = running count of valid pixels along each
    axis."""
    b_, h_, w_ = mask.shape
    valid = (~mask).tolist()
    out = torch.zeros(b_, 2 * num_feats, h_, w_, dtype=torch.float64)
    dim_t = [temperature ** (2 * (i // 2) / num_feats) for i in range(num_feats)]
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                y = sum(valid[b][r][j] for r in range(i + 1))
                x = sum(valid[b][i][c] for c in range(j + 1))
                if normalize:
                    y = y / (sum(valid[b][r][j] for r in range(h_)) + eps) * scale
                    x = x / (sum(valid[b][i][c] for c in range(w_)) + eps) * scale
                for k in range(num_feats):
                    f = math.sin if k % 2 == 0 else math.cos
                    out[b, k, i, j] = f(y / dim_t[k])  # y-features first
                    out[b, num_feats + k, i, j] = f(x / dim_t[k])
    return out


def padded_mask():
    mask = torch.ones(2, 5, 6, dtype=torch.bool)
    mask[0, :3, :4] = False
    mask[1, :, :] = False
    return mask


@pytest.mark.parametrize("num_feats", [4, 6])
def test_sine_encoding_matches_hand_computation(num_feats):
    mask = padded_mask()
    pos = PositionEmbeddingSine(num_feats, normalize=True)(mask)
    assert pos.shape == (2, 2 * num_feats, 5, 6) and pos.dtype == torch.float32
    torch.testing.assert_close(pos.double(), encoding_by_hand(mask, num_feats), atol=1e-5, rtol=0)


def test_sine_encoding_unnormalized_and_custom_temperature():
    mask = padded_mask()
    pos = PositionEmbeddingSine(4, temperature=20, normalize=False)(mask)
    torch.testing.assert_close(
        pos.double(), encoding_by_hand(mask, 4, temperature=20, normalize=False), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError):
        PositionEmbeddingSine(4, normalize=False, scale=1.0)


def test_valid_region_encoding_independent_of_padding_amount():
    """Normalization uses the valid extent, so the same image padded differently has the same
    encoding."""
    m_small = torch.zeros(1, 3, 4, dtype=torch.bool)
    m_big = torch.ones(1, 7, 9, dtype=torch.bool)
    m_big[0, :3, :4] = False
    enc = PositionEmbeddingSine(8)
    torch.testing.assert_close(enc(m_big)[..., :3, :4], enc(m_small))
    # last valid coordinate is 2*pi (up to eps) along both axes
    pos = enc(m_small)
    torch.testing.assert_close(
        pos[0, 0, -1, 0], torch.tensor(math.sin(2 * math.pi / (1 + 1e-6 / 3)))
    )
