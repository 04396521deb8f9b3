"""The toy set's image generator as it was at format version 3, before the drawing moved to
``detr_panoptic_d2.data.scenes``: the reference that ``thing_colors="class"`` must reproduce byte
for byte (cached toy sets and recorded results were made with it). Frozen: do not edit.
"""

import numpy as np

# Visible area (px) below which a thing falls back to the stuff underneath: a segment of fewer
# pixels is a few cells of a stride-4 mask.
_MIN_THING_AREA = 150
# Thing size range, as a fraction of the short image side: 0.22 x 128 px ~ 28 px, two stride-16
# cells.
_THING_SIZE = (0.22, 0.55)
# Non-contiguous dataset ids, as in COCO, so the contiguous-id mapping is exercised.
TOY_CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 50, 50]},
    {"id": 2, "name": "square", "isthing": 1, "color": [235, 205, 40]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [60, 190, 70]},
    {"id": 5, "name": "bar", "isthing": 1, "color": [190, 60, 200]},
    {"id": 7, "name": "cross", "isthing": 1, "color": [245, 245, 245]},
    {"id": 10, "name": "sky", "isthing": 0, "color": [140, 195, 240]},
    {"id": 11, "name": "water", "isthing": 0, "color": [35, 80, 160]},
    {"id": 12, "name": "ground", "isthing": 0, "color": [130, 95, 60]},
]
_THINGS = [c for c in TOY_CATEGORIES if c["isthing"]]
_STUFF = [c for c in TOY_CATEGORIES if not c["isthing"]]  # listed top-to-bottom
# Probability of drawing 0, 1, ..., 4 thing instances in an image (up to 6 before version 3:
# crowded images are the hardest for a DETR trained for minutes on a CPU).
_NUM_THINGS_P = np.array([0.08, 0.25, 0.27, 0.22, 0.18])


def _shape_mask(kind, yy, xx, cx, cy, s, vertical):
    """Boolean mask of one thing shape of class ``kind`` with centre (cx, cy) and size s."""
    dx, dy = xx - cx, yy - cy
    if kind == "circle":
        return dx**2 + dy**2 <= (s / 2) ** 2
    if kind == "square":
        return (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
    if kind == "triangle":  # apex up, base at the bottom
        h = 0.9 * s
        t = (dy + h / 2) / h  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * s / 2)
    if kind == "bar":
        long_, short = s / 2, s / 7
        ax, ay = (short, long_) if vertical else (long_, short)
        return (np.abs(dx) <= ax) & (np.abs(dy) <= ay)
    if kind == "cross":
        arm = s / 6
        inside = (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(kind)


def _make_sample(rng, lo, hi):
    """Return (rgb uint8 HxWx3, segment ids int32 HxW, segments_info) for one image."""
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ids = np.zeros((h, w), np.int32)
    cats, colors = {}, {}

    # Stuff: 1-3 bands from top to bottom with wavy boundaries.
    k = int(rng.integers(1, 4))
    stuff = sorted(rng.choice(len(_STUFF), size=k, replace=False).tolist())
    edges = [0.25, 0.75] if k == 2 else [0.25, 0.45, 0.55, 0.75]  # band boundaries stay apart
    cuts = [rng.uniform(edges[2 * i], edges[2 * i + 1]) * h for i in range(k - 1)]
    for i, si in enumerate(stuff):
        sid = i + 1
        if i == 0:
            ids[:] = sid
        else:
            amp, period, phase = rng.uniform(2, 6), rng.uniform(40, 120), rng.uniform(0, 2 * np.pi)
            boundary = cuts[i - 1] + amp * np.sin(2 * np.pi * xx / period + phase)
            ids[yy >= boundary] = sid
        cats[sid] = _STUFF[si]
        colors[sid] = np.array(_STUFF[si]["color"], np.float32) * rng.uniform(0.9, 1.1)

    stuff_ids = ids.copy()

    # Things: drawn in order, later ones occlude earlier ones.
    short = min(h, w)
    for j in range(int(rng.choice(len(_NUM_THINGS_P), p=_NUM_THINGS_P))):
        tid = k + 1 + j
        cat = _THINGS[int(rng.integers(len(_THINGS)))]
        s = rng.uniform(*_THING_SIZE) * short
        cx, cy = rng.uniform(s / 4, w - s / 4), rng.uniform(s / 4, h - s / 4)
        mask = _shape_mask(cat["name"], yy, xx, cx, cy, s, bool(rng.integers(2)))
        ids[mask] = tid
        cats[tid] = cat
        colors[tid] = np.array(cat["color"], np.float32) * rng.uniform(0.75, 1.0)

    # Thing segments whose visible part is too small fall back to the stuff underneath.
    for tid in [t for t in cats if cats[t]["isthing"]]:
        small = ids == tid
        if small.sum() < _MIN_THING_AREA:
            ids[small] = stuff_ids[small]

    # Render: per-segment colour, mild texture and noise, darker outline on things.
    present = [sid for sid in sorted(cats) if (ids == sid).any()]
    img = np.zeros((h, w, 3), np.float32)
    for sid in present:
        img[ids == sid] = colors[sid]
    shade = 1 + 0.06 * np.sin(xx / rng.uniform(5, 15) + yy / rng.uniform(5, 15))
    img *= shade[..., None]
    edge = np.zeros((h, w), bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, :-1] != ids[:, 1:]
    thing_px = np.isin(ids, [sid for sid in present if cats[sid]["isthing"]])
    img[edge & thing_px] *= 0.55
    img += rng.normal(0, 5, size=img.shape)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    segments = []
    for sid in present:
        ys, xs = np.nonzero(ids == sid)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": sid,
                "category_id": cats[sid]["id"],
                "iscrowd": 0,
                "area": int(len(xs)),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            }
        )
    return rgb, ids, segments
