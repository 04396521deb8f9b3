"""The model's outputs beside the panoptic merge: semantic output (MaskFormer's semantic inference)
and thing-only instances whenever the data set has a thing/stuff split, stage 1 included."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detr_test_utils import NUM_CLASSES, NUM_QUERIES, make_input, tiny_cfg

from detr_panoptic_d2.modeling.postprocess import semantic_inference


def _maskformer_semantic(logits, mask_logits, padded_size, image_size, out_size):
    """MaskFormer's semantic inference written out: upsample every mask to the padded input, crop
    the image, resize to the output size, sigmoid, then the class-probability-weighted sum over
    queries."""
    m = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    m = m[:, : image_size[0], : image_size[1]]
    m = F.interpolate(m[None], size=out_size, mode="bilinear", align_corners=False)[0]
    probs = logits.softmax(-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, m.sigmoid())


@pytest.mark.parametrize("out_size", [(40, 60), (64, 88), (97, 131)])
def test_semantic_inference_matches_maskformer(out_size):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(23, 6, generator=g) * 3
    mask_logits = torch.randn(23, 16, 24, generator=g) * 4
    expected = _maskformer_semantic(logits, mask_logits, (64, 96), (64, 88), out_size)
    for chunk in (1, 5, 100):  # queries taken a chunk at a time: same sum
        got = semantic_inference(logits, mask_logits, (64, 96), (64, 88), out_size, chunk=chunk)
        assert got.shape == (5, *out_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _register(name, things, stuff):
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(
            thing_dataset_id_to_contiguous_id={10 + c: c for c in things},
            stuff_dataset_id_to_contiguous_id={10 + c: c for c in list(things) + list(stuff)},
        )
    return name


def test_model_semantic_output_reads_every_query():
    name = _register("outputs_split_set_for_test", things=[0, 1], stuff=[2, 3, 4])
    cfg = tiny_cfg(
        mask_head=True, **{"DATASETS.TEST": (name,), "MODEL.DETR.TEST.SEMANTIC_ON": True}
    )
    model = build_model(cfg).eval()
    seen = []
    forward = model.mask_head.forward
    model.mask_head.forward = lambda f, b, q, **kw: (
        seen.append(q.tolist()) or forward(f, b, q, **kw)
    )
    x = make_input(64, 96, 0, height=50, width=70)
    with torch.no_grad():
        (res,) = model([x])
        images, mask = model.preprocess_image([x])
        out, features = model.detr(images.tensor, mask)
        all_masks = forward(
            features, torch.zeros(NUM_QUERIES, dtype=torch.long), torch.arange(NUM_QUERIES)
        )
    assert seen == [list(range(NUM_QUERIES))]
    sem = res["sem_seg"]
    assert sem.shape == (NUM_CLASSES, 50, 70) and sem.dtype == torch.float32
    expected = _maskformer_semantic(out["pred_logits"][0], all_masks, (64, 96), (64, 96), (50, 70))
    torch.testing.assert_close(sem, expected, atol=1e-5, rtol=1e-5)
    assert {"panoptic_seg", "instances", "sem_seg"} <= set(res)


@pytest.mark.parametrize("mask_head", [False, True])
def test_instances_hold_thing_classes_only(mask_head):
    """With a thing/stuff split every instance is a thing (stage 1 too: its stuff queries are boxes
    of stuff); without one (all things) every query is an instance, as DETR."""
    name = _register("outputs_split_set_for_test", things=[0, 1], stuff=[2, 3, 4])
    model = build_model(tiny_cfg(mask_head=mask_head, **{"DATASETS.TEST": (name,)})).eval()

    def mixed(module, inputs, output):  # query i's best real class is i % K: things and stuff
        crafted = torch.zeros_like(output)
        crafted[..., torch.arange(NUM_QUERIES), torch.arange(NUM_QUERIES) % NUM_CLASSES] = 5.0
        return crafted + 0.0 * output

    model.detr.class_embed.register_forward_hook(mixed)
    with torch.no_grad():
        x = make_input(64, 96, 0)
        (res,) = model([x])
        images, mask = model.preprocess_image([x])
        out, _ = model.detr(images.tensor, mask)
    best = out["pred_logits"][0].softmax(-1)[:, :-1].argmax(-1)
    inst = res["instances"]
    assert 0 < len(inst) == int((best < 2).sum()) < NUM_QUERIES
    assert set(inst.pred_classes.tolist()) <= {0, 1}
    everything = build_model(
        tiny_cfg(mask_head=mask_head)
    ).eval()  # no metadata: all classes are things
    with torch.no_grad():
        assert len(everything([x])[0]["instances"]) == NUM_QUERIES


def test_semantic_on_applies_with_a_mask_head_only():
    """Like PANOPTIC_ON, a key shared by both stages' configs: stage 1 has no masks, hence no
    sem_seg."""
    model = build_model(tiny_cfg(**{"MODEL.DETR.TEST.SEMANTIC_ON": True})).eval()
    with torch.no_grad():
        (res,) = model([make_input(64, 96, 0)])
    assert set(res) == {"instances"}
