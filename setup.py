import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """Also copies configs/ into the built package (detr_panoptic_d2/configs), so that
    ``model_zoo.get_config`` finds them in an installed wheel as in a checkout (Detectron2 ships
    its configs the same way). An editable install reads the checkout's configs/."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "detr_panoptic_d2", "configs")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(
            os.path.join(HERE, "configs"), target, ignore=shutil.ignore_patterns("__pycache__")
        )


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
    cmdclass={"build_py": BuildWithConfigs},
    # torch, torchvision, detectron2 and panopticapi are installed by scripts/bootstrap.sh
    # (detectron2 is not on PyPI under its own name); the rest are ordinary dependencies.
    install_requires=["scipy", "pycocotools", "fvcore", "iopath", "numpy", "pillow", "tqdm"],
)
