"""Tests of the toy panoptic data set: file consistency, determinism, caching, input checks,
detectron2 registration, PQ evaluation of ground truth and perturbed ground truth, and the thing
colour modes (cache key, config key)."""

import json
import os
import re
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
from panopticapi.utils import rgb2id
from PIL import Image

from detr_panoptic_d2.data.toy_dataset import (
    TOY_CATEGORIES,
    generate_toy_panoptic,
    register_toy_panoptic,
    toy_dataset_metadata,
)

CATS = {c["id"]: c for c in TOY_CATEGORIES}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A small generated set shared by the read-only tests."""
    return generate_toy_panoptic(tmp_path_factory.mktemp("toy"), num_train=6, num_val=8)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _all_files(root):
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f != "meta.json"
    )


def _unique_names():
    tag = uuid.uuid4().hex[:8]
    return (f"toy_test_train_{tag}", f"toy_test_val_{tag}")


def test_files_are_consistent(toy):
    for split in ("train", "val"):
        paths = toy[split]
        data = _load(paths["panoptic_json"])
        assert [c["id"] for c in data["categories"]] == [1, 2, 3, 5, 7, 10, 11, 12]
        images = {im["id"]: im for im in data["images"]}
        assert len(images) == len(data["annotations"]) == (6 if split == "train" else 8)
        for ann in data["annotations"]:
            im = images[ann["image_id"]]
            assert ann["file_name"][:-4] == im["file_name"][:-4]
            rgb = Image.open(os.path.join(paths["image_root"], im["file_name"]))
            assert rgb.size == (im["width"], im["height"]) and rgb.mode == "RGB"
            assert 128 <= im["width"] <= 192 and 128 <= im["height"] <= 192
            pan = rgb2id(
                np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"])))
            )
            assert pan.shape == (im["height"], im["width"])
            segs = {s["id"]: s for s in ann["segments_info"]}
            assert len(segs) == len(ann["segments_info"])
            assert set(np.unique(pan).tolist()) == set(segs)  # no void, no missing id
            assert any(not CATS[s["category_id"]]["isthing"] for s in segs.values())
            for sid, s in segs.items():
                assert sid > 0 and s["category_id"] in CATS and s["iscrowd"] == 0
                ys, xs = np.nonzero(pan == sid)
                assert s["area"] == len(xs)
                assert s["bbox"] == [
                    xs.min(),
                    ys.min(),
                    xs.max() - xs.min() + 1,
                    ys.max() - ys.min() + 1,
                ]
                if CATS[s["category_id"]]["isthing"]:
                    assert s["area"] >= 150  # smaller visible parts fall back to stuff


def test_thing_count_distribution(tmp_path):
    out = generate_toy_panoptic(tmp_path, num_train=40, num_val=1)
    data = _load(out["train"]["panoptic_json"])
    counts = [
        sum(CATS[s["category_id"]]["isthing"] for s in a["segments_info"])
        for a in data["annotations"]
    ]
    assert min(counts) == 0 and max(counts) == 4
    used = Counter(s["category_id"] for a in data["annotations"] for s in a["segments_info"])
    assert set(used) == set(CATS)  # every category occurs


def test_deterministic_and_cached(tmp_path):
    a = generate_toy_panoptic(tmp_path / "a", num_train=3, num_val=2, seed=5)
    b = generate_toy_panoptic(tmp_path / "b", num_train=3, num_val=2, seed=5)
    files_a, files_b = _all_files(a["root"]), _all_files(b["root"])
    assert [os.path.relpath(f, a["root"]) for f in files_a] == [
        os.path.relpath(f, b["root"]) for f in files_b
    ]
    for fa, fb in zip(files_a, files_b):
        assert open(fa, "rb").read() == open(fb, "rb").read(), fa

    mtimes = {f: os.stat(f).st_mtime_ns for f in files_a}
    again = generate_toy_panoptic(tmp_path / "a", num_train=3, num_val=2, seed=5)
    assert again["generated"] is False
    assert {f: os.stat(f).st_mtime_ns for f in _all_files(a["root"])} == mtimes

    c = generate_toy_panoptic(tmp_path / "c", num_train=3, num_val=2, seed=6)
    assert (
        open(files_a[-1], "rb").read()
        != open(os.path.join(c["root"], os.path.relpath(files_a[-1], a["root"])), "rb").read()
    )

    # Different arguments regenerate in place; overwrite forces a rewrite.
    more = generate_toy_panoptic(tmp_path / "a", num_train=4, num_val=2, seed=5)
    assert more["generated"] is True
    assert len(_load(more["train"]["panoptic_json"])["images"]) == 4
    assert (
        generate_toy_panoptic(tmp_path / "a", num_train=4, num_val=2, seed=5, overwrite=True)[
            "generated"
        ]
        is True
    )


def test_cache_regenerates_when_generator_constants_change(tmp_path, monkeypatch):
    """A cached set made with other thing constants must not stand in for the current
    generator's."""
    from detr_panoptic_d2.data import toy_dataset

    assert generate_toy_panoptic(tmp_path, num_train=2, num_val=1)["generated"] is True
    assert generate_toy_panoptic(tmp_path, num_train=2, num_val=1)["generated"] is False
    monkeypatch.setattr(toy_dataset, "NUM_THINGS_P", np.array([0.0, 0.0, 1.0]))
    assert generate_toy_panoptic(tmp_path, num_train=2, num_val=1)["generated"] is True
    monkeypatch.setattr(toy_dataset, "THING_SIZE", (0.3, 0.4))
    assert generate_toy_panoptic(tmp_path, num_train=2, num_val=1)["generated"] is True


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": 0}, "num_val"),
        ({"num_train": 2.5}, "num_train"),
        ({"image_size": (16, 64)}, "image_size"),
        ({"image_size": (100, 64)}, "image_size"),
        ({"image_size": (64, 4096)}, "image_size"),
        ({"image_size": 64}, "image_size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_toy_panoptic(tmp_path, **{"num_train": 2, "num_val": 1, **kwargs})
    assert not os.listdir(tmp_path)  # nothing written


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad = blocker / "toy"
    with pytest.raises(OSError, match=re.escape(str(bad))):
        generate_toy_panoptic(bad, num_train=1, num_val=1)


def test_registration(toy):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = _unique_names()
    assert register_toy_panoptic(toy["root"], names) == names
    register_toy_panoptic(toy["root"], names)  # idempotent
    meta = MetadataCatalog.get(names[1])
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 5: 3, 7: 4}
    assert meta.stuff_dataset_id_to_contiguous_id == {
        1: 0,
        2: 1,
        3: 2,
        5: 3,
        7: 4,
        10: 5,
        11: 6,
        12: 7,
    }
    assert meta.stuff_classes == [c["name"] for c in TOY_CATEGORIES] == meta.thing_classes
    assert meta.panoptic_json == toy["val"]["panoptic_json"]
    assert toy_dataset_metadata()["thing_colors"] == [c["color"] for c in TOY_CATEGORIES]

    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == 6
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"])
        for s in d["segments_info"]:
            assert 0 <= s["category_id"] < 8
            assert s["isthing"] == (s["category_id"] < 5)


# ---------------------------------------------------------------- PQ evaluation of the data


def _predictions(dicts):
    """Ground truth as detectron2 panoptic outputs: ids remapped to 1..n, contiguous classes."""
    preds = []
    for d in dicts:
        gt = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        pan = np.zeros(gt.shape, np.int32)
        infos = []
        for new_id, s in enumerate(d["segments_info"], start=1):
            pan[gt == s["id"]] = new_id
            infos.append(
                {"id": new_id, "category_id": s["category_id"], "isthing": bool(s["isthing"])}
            )
        preds.append({"panoptic_seg": (torch.from_numpy(pan), infos)})
    return preds


def _evaluate(name, dicts, preds, out_dir):
    from detectron2.evaluation import COCOPanopticEvaluator

    ev = COCOPanopticEvaluator(name, str(out_dir))
    ev.reset()
    ev.process([{"file_name": d["file_name"], "image_id": d["image_id"]} for d in dicts], preds)
    return ev.evaluate()["panoptic_seg"]


def _expected(stats):
    """PQ/SQ/RQ (in %) from per-class [tp, fp, fn, iou_sum], averaged over present classes."""
    out = {}
    for key, keep in (("", lambda c: True), ("_th", lambda c: c < 5), ("_st", lambda c: c >= 5)):
        pq, sq, rq = [], [], []
        for c, (tp, fp, fn, iou) in stats.items():
            if keep(c) and tp + fp + fn > 0:
                pq.append(iou / (tp + fp / 2 + fn / 2))
                sq.append(iou / tp if tp else 0.0)
                rq.append(tp / (tp + fp / 2 + fn / 2))
        out.update(
            {
                "PQ" + key: 100 * np.mean(pq),
                "SQ" + key: 100 * np.mean(sq),
                "RQ" + key: 100 * np.mean(rq),
            }
        )
    return out


def _assert_close(res, expected):
    for k, v in expected.items():
        assert res[k] == pytest.approx(v, abs=1e-6), k


def test_pq_of_ground_truth_and_perturbations(toy, tmp_path):
    from detectron2.data import DatasetCatalog

    name = _unique_names()[1]
    register_toy_panoptic(toy["root"], ("unused_" + name, name))
    dicts = DatasetCatalog.get(name)
    counts = Counter(s["category_id"] for d in dicts for s in d["segments_info"])
    perfect = {c: [counts[c], 0, 0, float(counts[c])] for c in range(8)}

    res = _evaluate(name, dicts, _predictions(dicts), tmp_path / "gt")
    for k in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
        assert res[k] == pytest.approx(100.0, abs=1e-6), k

    # 1) One thing segment gets another thing class: 1 FN for the old class, 1 FP for the new.
    preds = _predictions(dicts)
    i, j = next(
        (i, j)
        for i, d in enumerate(dicts)
        for j, s in enumerate(d["segments_info"])
        if s["isthing"]
    )
    old = dicts[i]["segments_info"][j]["category_id"]
    new = (old + 1) % 5
    preds[i]["panoptic_seg"][1][j]["category_id"] = new
    stats = {c: list(v) for c, v in perfect.items()}
    stats[old] = [counts[old] - 1, 0, 1, counts[old] - 1.0]
    stats[new] = [counts[new], 1, 0, float(counts[new])]
    expected = _expected(stats)
    res = _evaluate(name, dicts, preds, tmp_path / "relabel")
    _assert_close(res, expected)
    assert res["PQ"] < 100 and res["PQ_st"] == pytest.approx(100.0)

    # 2) A quarter of one stuff segment becomes void: still matched, with IoU = 3/4 (rounded).
    preds = _predictions(dicts)
    pan, infos = preds[0]["panoptic_seg"]
    k = next(j for j, s in enumerate(infos) if not s["isthing"])
    ys, xs = np.nonzero(pan.numpy() == infos[k]["id"])
    erased = len(ys) // 4
    pan[ys[:erased], xs[:erased]] = 0
    cls = infos[k]["category_id"]
    stats = {c: list(v) for c, v in perfect.items()}
    stats[cls][3] = counts[cls] - 1 + (len(ys) - erased) / len(ys)
    expected = _expected(stats)
    res = _evaluate(name, dicts, preds, tmp_path / "erase")
    _assert_close(res, expected)
    assert res["RQ"] == pytest.approx(100.0) and res["SQ_th"] == pytest.approx(100.0)
    assert res["SQ"] < 100


# ---------------------------------------------------------------- thing colour modes


def test_thing_colors_is_part_of_the_cache_key(tmp_path):
    cls = generate_toy_panoptic(tmp_path, num_train=3, num_val=2)
    assert (
        cls["generated"] is True
        and _load(os.path.join(tmp_path, "meta.json"))["thing_colors"] == "class"
    )
    class_bytes = {f: open(f, "rb").read() for f in _all_files(tmp_path)}
    assert generate_toy_panoptic(tmp_path, num_train=3, num_val=2)["generated"] is False

    rnd = generate_toy_panoptic(tmp_path, num_train=3, num_val=2, thing_colors="random")
    assert rnd["generated"] is True
    assert _load(os.path.join(tmp_path, "meta.json"))["thing_colors"] == "random"
    assert (
        generate_toy_panoptic(tmp_path, num_train=3, num_val=2, thing_colors="random")["generated"]
        is False
    )
    random_bytes = {f: open(f, "rb").read() for f in _all_files(tmp_path)}
    assert random_bytes.keys() == class_bytes.keys()
    changed = [f for f in class_bytes if class_bytes[f] != random_bytes[f]]
    assert any(f.endswith(".jpg") for f in changed)  # the images of images with things

    # Back to "class": regenerated, byte-identical to the first class-coloured set.
    assert generate_toy_panoptic(tmp_path, num_train=3, num_val=2)["generated"] is True
    assert {f: open(f, "rb").read() for f in _all_files(tmp_path)} == class_bytes


def test_set_cached_before_thing_colors_existed_counts_as_class(tmp_path):
    """A version-3 meta.json without the key was written by the class-coloured generator."""
    generate_toy_panoptic(tmp_path, num_train=2, num_val=1)
    meta_path = os.path.join(tmp_path, "meta.json")
    meta = _load(meta_path)
    del meta["thing_colors"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    assert generate_toy_panoptic(tmp_path, num_train=2, num_val=1)["generated"] is False
    assert (
        generate_toy_panoptic(tmp_path, num_train=2, num_val=1, thing_colors="random")["generated"]
        is True
    )


def test_bad_thing_colors(tmp_path):
    with pytest.raises(ValueError, match="thing_colors"):
        generate_toy_panoptic(tmp_path, num_train=2, num_val=1, thing_colors="Random")
    assert not os.listdir(tmp_path)


def _toy_cfg(root, thing_colors):
    from detectron2.config import get_cfg

    from detr_panoptic_d2 import add_detr_panoptic_config

    cfg = get_cfg()
    add_detr_panoptic_config(cfg)
    cfg.DATASETS.TRAIN = ("toy_panoptic_train",)
    cfg.DATASETS.TEST = ("toy_panoptic_val",)
    cfg.DATASETS.TOY.ROOT = str(root)
    cfg.DATASETS.TOY.NUM_TRAIN, cfg.DATASETS.TOY.NUM_VAL = 2, 1
    cfg.DATASETS.TOY.IMAGE_SIZE = (64, 96)
    cfg.DATASETS.TOY.THING_COLORS = thing_colors
    return cfg


def test_register_from_cfg_reads_thing_colors(tmp_path, monkeypatch):
    from detr_panoptic_d2.data import toy_dataset

    calls = []  # the toy names stay as other tests registered them
    monkeypatch.setattr(
        toy_dataset, "register_toy_panoptic", lambda root, names: calls.append((root, names))
    )
    toy_dataset.register_toy_panoptic_from_cfg(_toy_cfg(tmp_path, "random"))
    assert _load(os.path.join(tmp_path, "meta.json"))["thing_colors"] == "random"
    assert calls == [(str(tmp_path), toy_dataset.TOY_DATASET_NAMES)]

    with pytest.raises(ValueError, match=re.escape("DATASETS.TOY.THING_COLORS")):
        toy_dataset.register_toy_panoptic_from_cfg(_toy_cfg(tmp_path / "bad", "rainbow"))
    assert not os.path.exists(tmp_path / "bad")
