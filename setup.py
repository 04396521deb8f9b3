from setuptools import find_packages, setup

setup(
    name="detr-panoptic-d2",
    version="0.1.0",
    description="DETR for panoptic segmentation as a Detectron2 plugin",
    python_requires=">=3.10",
    # detr_panoptic_runtime: runs exported models with numpy + Pillow (+ torch or onnxruntime), no
    # Detectron2
    packages=find_packages(
        include=["detr_panoptic_d2", "detr_panoptic_d2.*", "detr_panoptic_runtime"]
    ),
    # torch, torchvision, detectron2 and panopticapi are installed by scripts/bootstrap.sh
    # (detectron2 is not on PyPI under its own name); the rest are ordinary dependencies.
    install_requires=["scipy", "pycocotools", "fvcore", "iopath", "numpy", "pillow", "tqdm"],
)
