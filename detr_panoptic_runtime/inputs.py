"""Input images of the command-line tools (``tools/demo.py``, ``tools/run_exported.py``) and the
output names that keep them apart."""

import glob
import os
from collections import Counter

__all__ = ["IMAGE_EXTS", "list_inputs", "output_stems"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(paths, exts=IMAGE_EXTS):
    """The image files of ``paths`` (files, folders: their files ending in ``exts``, glob
    patterns), each once, in order. A path that is none of these raises ``FileNotFoundError``
    naming it."""
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(exts))
        elif any(c in p for c in "*?["):
            files += sorted(glob.glob(os.path.expanduser(p)))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"--input: no such file or folder: {p}")
    unique, seen = [], set()
    for f in files:
        if os.path.abspath(f) not in seen:
            seen.add(os.path.abspath(f))
            unique.append(f)
    return unique


def output_stems(files):
    """Output names (without extension) that never collide: each file's path relative to the
    common parent folder of all ``files``, its extension dropped (``a/1.jpg``, ``b/1.jpg`` →
    ``a/1``, ``b/1``; the files of one folder → their stems). Files whose names differ only by
    extension keep it (``1.jpg``, ``1.png`` → ``1.jpg``, ``1.png``)."""
    absolute = [os.path.abspath(f) for f in files]
    if not absolute:
        return []
    parent = os.path.commonpath([os.path.dirname(f) for f in absolute])
    relative = [os.path.relpath(f, parent) for f in absolute]
    stems = [os.path.splitext(r)[0] for r in relative]
    taken = Counter(stems)
    return [r if taken[s] > 1 else s for r, s in zip(relative, stems)]
