"""detr_panoptic_d2.model_zoo, and the public ways in that a Detectron2 user takes with it:
``DefaultPredictor`` on the plugin's configs (Detectron2's own checkpointer reading an official
DETR checkpoint), and a batch of images through the model directly."""

import glob
import os

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from omegaconf import DictConfig
from tiny_toy import REPO

from detr_panoptic_d2 import model_zoo

NAMES = sorted(
    os.path.relpath(p, os.path.join(REPO, "configs"))
    for p in glob.glob(os.path.join(REPO, "configs", "*", "*.*"))
    if not os.path.basename(p).startswith("Base-")
)
R50 = "COCO-PanopticSegmentation/detr_R_50_stage2"


def test_every_shipped_config_by_name():
    assert len(NAMES) == 16  # 8 YAML files and their LazyConfig twins
    for name in NAMES:
        cfg = model_zoo.get_config(name)
        if name.endswith(".yaml"):
            assert isinstance(cfg, CfgNode) and cfg.MODEL.META_ARCHITECTURE == "DetrPanoptic"
            assert "DETR" in cfg.MODEL  # the plugin's keys are there
        else:
            assert isinstance(cfg, DictConfig)
            assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)


@pytest.mark.parametrize(
    "name, url",
    [
        ("COCO-PanopticSegmentation/detr_R_50_stage2", "detr-r50-panoptic-00ce5173.pth"),
        ("COCO-PanopticSegmentation/detr_R_50_stage1", "detr-r50-panoptic-00ce5173.pth"),
        ("COCO-PanopticSegmentation/detr_R_50_DC5_stage2", "detr-r50-dc5-panoptic-da08f1b1.pth"),
        ("COCO-PanopticSegmentation/detr_R_101_stage2", "detr-r101-panoptic-40021d53.pth"),
    ],
)
def test_trained_sets_the_official_checkpoint(name, url):
    full = "https://dl.fbaipublicfiles.com/detr/" + url
    assert model_zoo.get_config(name + ".yaml", trained=True).MODEL.WEIGHTS == full
    assert model_zoo.get_config(name + ".py", trained=True).train.init_checkpoint == full
    assert model_zoo.get_config(name + ".yaml").MODEL.WEIGHTS != full


def test_names_without_a_config_or_weights_are_errors():
    with pytest.raises(RuntimeError, match="not a shipped config.*detr_R_50_stage1.yaml"):
        model_zoo.get_config("COCO-PanopticSegmentation/detr_R_18.yaml")
    with pytest.raises(RuntimeError, match="no trained weights"):
        model_zoo.get_config("toy/detr_R18_toy_stage2.yaml", trained=True)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A checkpoint in the official DETR layout (random values) standing in for the download,
    and the plugin model it was made from."""
    from official_layout import write_official_checkpoint

    path = str(tmp_path_factory.mktemp("official") / "detr-r50-panoptic.pth")
    source = write_official_checkpoint(path, distinct_queries=True)
    return path, source


@pytest.mark.slow
def test_get_and_default_predictor_read_the_official_checkpoint(official, monkeypatch):
    """The official URL, its download stood in for by the official-layout file: the plugin's
    loader and Detectron2's own (through the URL handler, converted once beside the download) give
    the weights of the model the file was made from."""
    path, source = official
    from detr_panoptic_d2.checkpoint import official as official_urls

    downloads = []

    class FakeDownload:
        def _get_local_path(self, url, **kwargs):
            downloads.append(url)
            return path

    monkeypatch.setattr(official_urls.HANDLER, "_http", FakeDownload())
    expected = source.state_dict()
    for name in (R50 + ".yaml", R50 + ".py"):
        model = model_zoo.get(name, trained=True, device="cpu")
        got = model.state_dict()
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected), name

    # DefaultPredictor: Detectron2's own checkpointer on the raw official file
    cfg = model_zoo.get_config(R50 + ".yaml", trained=True)
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.0  # random weights: keep every query
    predictor = DefaultPredictor(cfg)
    got = predictor.model.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert set(downloads) == {model_zoo.OFFICIAL_WEIGHTS["COCO-PanopticSegmentation/detr_R_50"]}
    assert os.path.isfile(path + ".d2.pth")  # converted once, beside the download

    # a raw official file given by its local path: Detectron2's checkpointer drops the class
    # head (another shape) before the model sees it; that is an error, not a random head
    cfg.MODEL.WEIGHTS = path
    with pytest.raises(RuntimeError, match="without its class head.*convert_detr_checkpoint"):
        DefaultPredictor(cfg)

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    out = predictor(bgr)
    seg, segments = out["panoptic_seg"]
    assert seg.shape == (120, 160) and out["instances"].image_size == (120, 160)
    assert segments and set(np.unique(seg.numpy())) - {0} == {s["id"] for s in segments}
    # the same through the model directly, preprocessed as DefaultPredictor does it (RGB, resized)
    resized = T.ResizeShortestEdge(96, 128).get_transform(bgr).apply_image(bgr[:, :, ::-1])
    image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        direct = predictor.model([{"image": image, "height": 120, "width": 160}])[0]
    assert torch.equal(direct["panoptic_seg"][0], seg)
    assert direct["panoptic_seg"][1] == segments


def test_a_batch_through_the_model_and_the_predictor(tmp_path):
    """The toy stage-2 model (random weights, saved as a checkpoint): DefaultPredictor on one image
    and the model on a batch of two give Detectron2's outputs at each image's own size, and the
    predictor's equals the model's on that image."""
    from detectron2.modeling import build_model

    from detr_panoptic_d2.checkpoint import save_d2_checkpoint

    cfg = model_zoo.get_config("toy/detr_R18_toy_stage2.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DETR.TEST.SEMANTIC_ON = True
    cfg.DATASETS.TOY.ROOT = str(tmp_path / "toy")  # metadata only: nothing is generated
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    from detr_panoptic_d2.lazy import register_datasets

    register_datasets(list(cfg.DATASETS.TEST), {"root": cfg.DATASETS.TOY.ROOT}, generate=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg.MODEL.WEIGHTS = str(tmp_path / "toy.pth")
    save_d2_checkpoint(model.state_dict(), cfg.MODEL.WEIGHTS, "test")
    predictor = DefaultPredictor(cfg)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((64, 96, 3), (50, 70, 3))]
    out = predictor(images[1])
    assert out["panoptic_seg"][0].shape == (50, 70)
    assert out["sem_seg"].shape[1:] == (50, 70)
    assert out["instances"].image_size == (50, 70)

    batch = []
    for bgr in images:
        rgb = bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr
        resized = T.ResizeShortestEdge(64, 96).get_transform(rgb).apply_image(rgb)
        batch.append(
            {
                "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": bgr.shape[0],
                "width": bgr.shape[1],
            }
        )
    with torch.no_grad():
        outs = model(batch)
    assert [o["panoptic_seg"][0].shape for o in outs] == [(64, 96), (50, 70)]
    # batch of two vs one image: padding changes nothing the image sees at float precision;
    # compared on its own, the predictor equals the model on the same single image
    with torch.no_grad():
        single = model([batch[1]])[0]
    assert torch.equal(single["panoptic_seg"][0], out["panoptic_seg"][0])
    assert torch.allclose(single["sem_seg"], out["sem_seg"])


@pytest.mark.slow
def test_an_installed_wheel_ships_the_configs(tmp_path):
    """A wheel of the checkout, installed elsewhere: model_zoo finds every config inside the
    package (no checkout next to it), and a LazyConfig there still finds its YAML twin."""
    import subprocess
    import sys

    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "w", REPO],
        check=True,
    )
    (wheel,) = (tmp_path / "w").glob("*.whl")
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", target, wheel], check=True)
    code = (
        "from detr_panoptic_d2 import model_zoo as z; "
        "p = z.get_config_file('toy/detr_R18_toy_stage2.py'); print(p); "
        "print(z.get_config('COCO-PanopticSegmentation/detr_R_50_stage2.py').model.detr.num_queries)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(target)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path, queries = proc.stdout.strip().splitlines()[-2:]
    assert path.startswith(str(target)), path
    assert int(queries) == 100
