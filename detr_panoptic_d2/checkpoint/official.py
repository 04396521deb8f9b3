"""The official DETR checkpoint URLs, readable by any Detectron2 loader.

Detectron2's own ``DetectionCheckpointer`` (``DefaultPredictor``, a LazyConfig training loop)
drops every checkpoint tensor whose shape differs from the model's before the model sees it: the
official panoptic class head (250 COCO ids + no-object) would be lost before it could be mapped to
the 133 contiguous classes. :class:`OfficialDetrHandler`, registered in Detectron2's
``PathManager`` for ``https://dl.fbaipublicfiles.com/detr/``, downloads such a URL as Detectron2
does (its cache) and hands out the converted file beside it (``<download>.d2.pth``, this plugin's
names and class order, written once), so ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` set to an
official URL loads the same weights through every loader.
"""

import logging

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import HTTPURLHandler, PathHandler

logger = logging.getLogger(__name__)

OFFICIAL_PREFIX = "https://dl.fbaipublicfiles.com/detr/"


class OfficialDetrHandler(PathHandler):
    """``PathManager`` handler of the official DETR checkpoint URLs: the local path of the
    download converted to this plugin's layout (see the module docstring)."""

    def __init__(self, download=None):
        super().__init__()
        self._http = download or HTTPURLHandler()

    def _get_supported_prefixes(self):
        return [OFFICIAL_PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        from .loading import convert_to_plugin_file

        raw = self._http._get_local_path(path, force=force, **kwargs)
        return convert_to_plugin_file(raw, raw + ".d2.pth", source_name=path, force=force)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._get_local_path(path), mode, buffering=buffering)


HANDLER = OfficialDetrHandler()
PathManager.register_handler(HANDLER)
