"""A user's copy of tools/train_net.py: their own COCO-panoptic-format data set registered first
(root in $WAREHOUSE_ROOT), then the tool as it is."""

import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))  # the tests' on-disk layouts (dataset_layouts.py)

from dataset_layouts import register_custom_panoptic  # noqa: E402

if __name__ == "__main__":
    register_custom_panoptic("warehouse", os.environ["WAREHOUSE_ROOT"])
    runpy.run_path(os.path.join(REPO, "tools", "train_net.py"), run_name="__main__")
