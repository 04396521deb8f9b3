"""DETR panoptic on the toy set, R-18, stage 2.

The LazyConfig twin of detr_R18_toy_stage2.yaml:
its values come from that YAML file (loaded with the plugin's defaults, ``_BASE_`` resolved)
through ``detr_panoptic_d2.lazy``. Edit them here or on the command line, the LazyConfig way
(``model.detr.num_queries=50``, ``train.max_iter=1000``; see docs/lazyconfig.md):

    python tools/lazyconfig_train_net.py \
        --config-file configs/toy/detr_R18_toy_stage2.py \
        model.frozen_weights=output/toy/stage1/model_final.pth
    python tools/lazyconfig_train_net.py \
        --config-file configs/toy/detr_R18_toy_stage2.py \
        --eval-only train.init_checkpoint=model.pth
"""

from detr_panoptic_d2.lazy import lazy_twin

model, dataloader, optimizer, lr_multiplier, train, datasets = lazy_twin(__file__).values()
