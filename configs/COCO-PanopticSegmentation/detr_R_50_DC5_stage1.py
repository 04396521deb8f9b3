"""DETR panoptic on COCO, R-50-DC5, stage 1.

The LazyConfig twin of detr_R_50_DC5_stage1.yaml:
its values come from that YAML file (loaded with the plugin's defaults, ``_BASE_`` resolved)
through ``detr_panoptic_d2.lazy``. Edit them here or on the command line, the LazyConfig way
(``model.detr.num_queries=50``, ``train.max_iter=1000``; see docs/lazyconfig.md):

    python tools/lazyconfig_train_net.py \
        --config-file configs/COCO-PanopticSegmentation/detr_R_50_DC5_stage1.py
"""

from detr_panoptic_d2.lazy import lazy_twin

model, dataloader, optimizer, lr_multiplier, train, datasets = lazy_twin(__file__).values()
