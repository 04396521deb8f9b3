"""Synthetic panoptic scenes: wavy horizontal "stuff" bands with "thing" shapes drawn on top.

One function, :func:`draw_scene`, draws an image, its per-pixel segment map and the segments'
annotations. The toy data set (:mod:`.toy_dataset`) and the synthetic copies of real data set
layouts (``tools/dataset_layouts.py``, for tests and ``tools/generate_toy_dataset.py``) both draw
their images with it; the argument checks, metadata and registration helpers the two share are
here too.

Things are shapes of 22-55 % of the short image side, 0-4 per image, drawn in order so that
later ones occlude earlier ones; a thing with fewer than 150 visible pixels gives way to the stuff
underneath. A thing class is drawn as one shape (:data:`THING_SHAPES`); its colour is either
the class colour (``thing_colors="class"``: colour and shape both tell the class) or a random
colour per instance that stands out from the stuff behind it (``thing_colors="random"``: only the
shape tells the class). Stuff classes are 1-3 bands from top to bottom, in the order given,
each in its class colour with a mild texture.
"""

from typing import List, NamedTuple

import numpy as np

__all__ = [
    "THING_SHAPES",
    "THING_COLOR_MODES",
    "Scene",
    "check_split_sizes",
    "check_thing_colors",
    "draw_scene",
    "keep_registration",
    "panoptic_metadata",
    "segments_from_ids",
    "shape_mask",
]

# Shapes a thing class can take. The first five are the toy set's classes; a scene set uses at
# most one class per shape, so that the shape alone always tells the class.
THING_SHAPES = ("circle", "square", "triangle", "bar", "cross", "diamond", "ring", "corner")
THING_COLOR_MODES = ("class", "random")

# Probability of drawing 0, 1, ..., 4 thing instances in an image.
NUM_THINGS_P = np.array([0.08, 0.25, 0.27, 0.22, 0.18])
# Thing size range, as a fraction of the short image side.
THING_SIZE = (0.22, 0.55)
# Visible area (px) below which a thing falls back to the stuff underneath.
MIN_THING_AREA = 150
# "random" thing colours: smallest RGB distance to the colour of every stuff band behind the thing.
MIN_STUFF_CONTRAST = 90.0
_RANDOM_COLOR_TRIES = 64


class Scene(NamedTuple):
    """One drawn image and its panoptic annotation."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    segment_ids: np.ndarray  # (H, W) int32; 1..n are segments, 0 would be void (never drawn)
    segments: List[dict]  # per present segment: id, category_id, iscrowd, area, bbox (XYWH)


def check_thing_colors(value, key="thing_colors"):
    """Return ``value`` if it is a thing colour mode, else raise a ValueError naming ``key``."""
    if value not in THING_COLOR_MODES:
        raise ValueError(f"{key} must be one of {THING_COLOR_MODES}, got {value!r}")
    return value


def shape_mask(shape, yy, xx, cx, cy, s, flip):
    """Boolean mask (H, W) of a thing ``shape`` of size ``s`` px centred on (cx, cy).

    ``yy``, ``xx`` are the (H, W) pixel coordinate grids. ``flip`` turns a bar vertical and
    mirrors the corner; the other shapes ignore it.
    """
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= (s / 2) ** 2
    if shape == "square":
        return (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
    if shape == "triangle":  # apex up, base at the bottom
        h = 0.9 * s
        t = (dy + h / 2) / h  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * s / 2)
    if shape == "bar":
        long_, short = s / 2, s / 7
        ax, ay = (short, long_) if flip else (long_, short)
        return (np.abs(dx) <= ax) & (np.abs(dy) <= ay)
    if shape == "cross":
        arm = s / 6
        inside = (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= s / 2
    if shape == "ring":
        r2 = dx**2 + dy**2
        return (r2 <= (s / 2) ** 2) & (r2 >= (s / 4) ** 2)
    if shape == "corner":  # an L: left arm and bottom arm of a square, mirrored by flip
        inside = (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
        side = dx >= s / 4 if flip else dx <= -s / 4
        return inside & (side | (dy >= s / 4))
    raise ValueError(f"unknown thing shape {shape!r}; known shapes: {THING_SHAPES}")


def _contrasting_color(rng, behind):
    """A random RGB colour (3,) at least MIN_STUFF_CONTRAST away from every colour in ``behind``
    (the best of a bounded number of tries if none is)."""
    best, best_dist = None, -1.0
    for _ in range(_RANDOM_COLOR_TRIES):
        color = rng.uniform(15, 240, size=3).astype(np.float32)
        dist = min(float(np.linalg.norm(color - b)) for b in behind)
        if dist >= MIN_STUFF_CONTRAST:
            return color
        if dist > best_dist:
            best, best_dist = color, dist
    return best


def segments_from_ids(ids, category_of, iscrowd_of=None):
    """Segment annotations of a segment-id map, in the COCO panoptic format.

    Args:
        ids: (H, W) integer map of segment ids; 0 is void.
        category_of: dict segment id -> category id.
        iscrowd_of: optional dict segment id -> 0/1 (default 0).

    Returns:
        list of dicts (id, category_id, iscrowd, area, bbox [x, y, w, h]) for the ids present
        in ``ids`` other than 0, in increasing id order.
    """
    segments = []
    for sid in np.unique(ids).tolist():
        if sid == 0:
            continue
        ys, xs = np.nonzero(ids == sid)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": int(sid),
                "category_id": int(category_of[sid]),
                "iscrowd": int((iscrowd_of or {}).get(sid, 0)),
                "area": int(len(xs)),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            }
        )
    return segments


def draw_scene(
    rng,
    size_range,
    things,
    stuff,
    *,
    thing_colors="class",
    num_things_p=NUM_THINGS_P,
    thing_size=THING_SIZE,
    min_thing_area=MIN_THING_AREA,
):
    """Draw one synthetic panoptic image.

    Args:
        rng: ``np.random.Generator``; the only source of randomness.
        size_range: (min, max) side length in px; height and width are drawn independently.
        things: thing classes, dicts with "id" (dataset category id), "color" (RGB) and "shape"
            (one of :data:`THING_SHAPES`).
        stuff: stuff classes, dicts with "id" and "color", in their top-to-bottom band order.
        thing_colors: "class" (each thing drawn in its class colour, slightly darkened at random)
            or "random" (each instance in a random colour that stands out from the stuff behind).
        num_things_p: probabilities of drawing 0, 1, 2, ... things.
        thing_size: (min, max) thing size as a fraction of the short image side.
        min_thing_area: a thing with fewer visible pixels gives way to the stuff underneath.

    Returns:
        :class:`Scene`. Segment ids are 1..k for the k stuff bands (top to bottom) and k+1, ...
        for the things in drawing order; only segments with visible pixels are listed.
    """
    check_thing_colors(thing_colors)
    if not stuff:
        raise ValueError("draw_scene needs at least one stuff class")
    lo, hi = size_range
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    ids = np.zeros((h, w), np.int32)
    category_of, colors, is_thing = {}, {}, set()

    # Stuff: 1-3 bands from top to bottom with wavy boundaries.
    k = min(int(rng.integers(1, 4)), len(stuff))
    chosen = sorted(rng.choice(len(stuff), size=k, replace=False).tolist())
    edges = [0.25, 0.75] if k == 2 else [0.25, 0.45, 0.55, 0.75]  # band boundaries stay apart
    cuts = [rng.uniform(edges[2 * i], edges[2 * i + 1]) * h for i in range(k - 1)]
    for i, si in enumerate(chosen):
        sid = i + 1
        if i == 0:
            ids[:] = sid
        else:
            amp, period, phase = rng.uniform(2, 6), rng.uniform(40, 120), rng.uniform(0, 2 * np.pi)
            boundary = cuts[i - 1] + amp * np.sin(2 * np.pi * xx / period + phase)
            ids[yy >= boundary] = sid
        category_of[sid] = stuff[si]["id"]
        colors[sid] = np.array(stuff[si]["color"], np.float32) * rng.uniform(0.9, 1.1)

    stuff_ids = ids.copy()  # (H, W)

    # Things: drawn in order, later ones occlude earlier ones.
    short = min(h, w)
    for j in range(int(rng.choice(len(num_things_p), p=num_things_p))):
        tid = k + 1 + j
        cat = things[int(rng.integers(len(things)))]
        s = rng.uniform(*thing_size) * short
        cx, cy = rng.uniform(s / 4, w - s / 4), rng.uniform(s / 4, h - s / 4)
        mask = shape_mask(cat["shape"], yy, xx, cx, cy, s, bool(rng.integers(2)))
        ids[mask] = tid
        category_of[tid] = cat["id"]
        is_thing.add(tid)
        if thing_colors == "class":
            colors[tid] = np.array(cat["color"], np.float32) * rng.uniform(0.75, 1.0)
        else:
            behind = np.unique(stuff_ids[mask]) if mask.any() else np.arange(1, k + 1)
            colors[tid] = _contrasting_color(rng, [colors[int(b)] for b in behind])

    # Thing segments whose visible part is too small fall back to the stuff underneath.
    for tid in sorted(is_thing):
        small = ids == tid
        if small.sum() < min_thing_area:
            ids[small] = stuff_ids[small]

    # Render: per-segment colour, mild texture and noise, darker outline on things.
    present = [sid for sid in sorted(category_of) if (ids == sid).any()]
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
    thing_px = np.isin(ids, [sid for sid in present if sid in is_thing])
    img[edge & thing_px] *= 0.55
    img += rng.normal(0, 5, size=img.shape)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    return Scene(rgb, ids, segments_from_ids(ids, category_of))


# ------------------------------------------ shared by .toy_dataset and tools/dataset_layouts.py


def check_split_sizes(num_train, num_val, image_size):
    """Check the image counts per split (integers >= 1) and the ``image_size`` (min, max) of a
    synthetic set; return (min, max) as ints. A bad value is a ValueError naming its argument."""
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        lo, hi = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a pair (min, max) of ints, got {image_size!r}")
    if lo < 32 or lo > hi or hi > 2048:
        raise ValueError(
            f"image_size must satisfy 32 <= min <= max <= 2048, got image_size={image_size!r}"
        )
    return lo, hi


def panoptic_metadata(categories, things_in_stuff_map):
    """Metadata of a synthetic set, in the convention of detectron2's builtin COCO panoptic set.

    Contiguous ids are shared by things and stuff in category order; ``thing_classes`` and
    ``stuff_classes`` both list all categories; ``thing_dataset_id_to_contiguous_id`` maps the
    things and ``stuff_dataset_id_to_contiguous_id`` the stuff, and the things too if
    ``things_in_stuff_map``.
    """
    names = [c["name"] for c in categories]
    colors = [list(c["color"]) for c in categories]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if things_in_stuff_map or not c["isthing"]
        },
    }


def keep_registration(name, panoptic_json):
    """True if ``name`` is registered with ``panoptic_json`` already. A registration of ``name``
    with another panoptic JSON is removed (and False returned), so that the caller registers the
    name anew rather than silently use the other files."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        return False
    if MetadataCatalog.get(name).get("panoptic_json") == panoptic_json:
        return True
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    return False
