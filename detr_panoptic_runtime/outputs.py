"""Writing the runtime's results: the segment-id PNG (panopticapi's ``id2rgb``), the segments JSON
and an overlay picture drawn with Pillow."""

import colorsys
import json

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["id2rgb", "rgb2id", "write_png", "write_json", "draw_overlay", "default_colors"]


def id2rgb(ids):
    """(H, W) int ids → (H, W, 3) uint8, as panopticapi.utils.id2rgb (R + 256 G + 256² B)."""
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.empty((*ids.shape, 3), dtype=np.uint8)
    for c in range(3):
        rgb[..., c] = ids % 256
        ids = ids // 256
    return rgb


def rgb2id(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def write_png(ids, path):
    Image.fromarray(id2rgb(ids)).save(path)


def write_json(segments_info, path, **extra):
    with open(path, "w") as f:
        json.dump({"segments_info": segments_info, **extra}, f, indent=1)
        f.write("\n")


def default_colors(n):
    """n distinct RGB colours (golden-ratio hues)."""
    return [
        [int(255 * v) for v in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
        for i in range(n)
    ]


def draw_overlay(image, ids, segments_info, class_names, colors, alpha=0.55):
    """(H, W, 3) uint8 picture: each segment tinted with its class colour (things slightly varied
    per instance), white boundaries, and a label "name score" at each segment's centre."""
    image = np.asarray(image, dtype=np.uint8)
    ids = np.asarray(ids)
    out = image.astype(np.float32)
    rng = np.random.default_rng(0)
    for s in segments_info:
        m = ids == s["id"]
        color = np.asarray(colors[s["category_id"]], dtype=np.float32)
        if s.get("isthing"):
            color = np.clip(color + rng.integers(-40, 41, 3), 0, 255)
        out[m] = out[m] * (1 - alpha) + color * alpha
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[edge] = 255
    picture = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for s in segments_info:
        ys, xs = np.nonzero(ids == s["id"])
        if len(ys) == 0:
            continue
        text = f"{class_names[s['category_id']]} {s.get('score', 0):.2f}"
        x, y = int(np.median(xs)), int(np.median(ys))
        box = draw.textbbox((x, y), text)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(picture)
