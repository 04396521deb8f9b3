"""DETR panoptic on COCO, R-50, stage 2 (the mask head on the frozen stage-1 weights).

The LazyConfig twin of detr_R_50_stage2.yaml:
its values come from that YAML file (loaded with the plugin's defaults, ``_BASE_`` resolved)
through ``detr_panoptic_d2.lazy``. Edit them here or on the command line, the LazyConfig way
(``model.detr.num_queries=50``, ``train.max_iter=1000``; see docs/lazyconfig.md):

    python tools/lazyconfig_train_net.py \
        --config-file configs/COCO-PanopticSegmentation/detr_R_50_stage2.py \
        model.frozen_weights=output/detr_R_50_stage1/model_final.pth
    python tools/lazyconfig_train_net.py \
        --config-file configs/COCO-PanopticSegmentation/detr_R_50_stage2.py \
        --eval-only train.init_checkpoint=model.pth
"""

from detr_panoptic_d2.lazy import lazy_twin

model, dataloader, optimizer, lr_multiplier, train, datasets = lazy_twin(__file__).values()
