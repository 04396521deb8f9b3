"""Pictures of predictions with Detectron2's Visualizer, and of what the model attends to."""

import numpy as np
import torch
from detectron2.utils.visualizer import ColorMode, Visualizer


def draw_prediction(image_rgb, predictions, metadata, scale=1.0):
    """(H, W, 3) uint8 RGB + a model output dict → (H', W', 3) uint8 picture of its panoptic
    segmentation (or of its instances when there is no panoptic output)."""
    vis = Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in predictions:
        seg, info = predictions["panoptic_seg"]
        return vis.draw_panoptic_seg(seg.cpu(), info).get_image()
    inst = predictions["instances"].to("cpu")
    return vis.draw_instance_predictions(inst).get_image()


def draw_ground_truth(image_rgb, dataset_dict, metadata, scale=1.0):
    """Ground truth of a Detectron2 dataset dict (panoptic PNG + segments_info) drawn on the
    image."""
    return Visualizer(image_rgb, metadata, scale=scale).draw_dataset_dict(dataset_dict).get_image()


def side_by_side(*images, gap=8):
    """Concatenate pictures horizontally (padded to the tallest) with a white gap."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = np.full((h, im.shape[1], 3), 255, dtype=np.uint8)
        pad[: im.shape[0]] = im
        parts.append(pad)
        if i < len(images) - 1:
            parts.append(np.full((h, gap, 3), 255, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


@torch.no_grad()
def explain_queries(model, inputs, metadata, out_path, input_format="RGB", max_queries=8):
    """For one image, draw each kept query's box, its M attention maps (H/32 × W/32 of the
    transformer input) and its mask, one row per query, into ``out_path`` (PNG). Returns the number
    of rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .modeling.box_ops import cxcywh_to_xyxy
    from .modeling.postprocess import upsample_masks

    model.eval()
    images, mask = model.preprocess_image([inputs])
    outputs, features = model.run_body(images.tensor, mask)  # the model's own inference path
    selection = model.select(outputs, features)[0]
    scores, labels = selection.scores, selection.labels
    queries = selection.keep.nonzero()[:, 0][:max_queries]
    h, w = images.image_sizes[0]
    image = inputs["image"].permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)
    if input_format == "BGR":
        image = image[..., ::-1]
    heads = model.mask_head.bbox_attention.num_heads
    rows = max(len(queries), 1)
    fig, axes = plt.subplots(rows, heads + 2, figsize=(2 * (heads + 2), 2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if len(queries):
        attn = model.mask_head.bbox_attention(
            features["box_embed"][0, queries], features["memory"][0], features["memory_mask"][0]
        )  # (Q, M, h/32, w/32)
        keep = torch.zeros_like(selection.keep)
        keep[queries] = True
        masks = selection.mask_logits[selection.rows(keep, "drawn")]
        masks = upsample_masks(masks, images.tensor.shape[-2:], (h, w))
        boxes = outputs["pred_boxes"][0, queries]
        boxes = (cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h])).cpu()
        names = metadata.get("stuff_classes", metadata.get("thing_classes", None))
        for r, q in enumerate(queries.tolist()):
            x0, y0, x1, y1 = boxes[r].tolist()
            ax = axes[r, 0]
            ax.imshow(image[:h, :w])
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=2))
            label = names[labels[q]] if names else int(labels[q])
            ax.set_title(f"query {q}: {label} {scores[q]:.2f}", fontsize=8)
            for m in range(heads):
                axes[r, 1 + m].imshow(attn[r, m].cpu().numpy(), cmap="viridis")
                axes[r, 1 + m].set_title(f"head {m}", fontsize=8)
            axes[r, -1].imshow(masks[r].sigmoid().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, -1].set_title("mask", fontsize=8)
    else:
        axes[0, 0].imshow(image[:h, :w])
        axes[0, 0].set_title("no query above the threshold", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return len(queries)
