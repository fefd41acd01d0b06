"""Let torchvision import beside a torch its compiled extension was not built for.

Why this exists: spandrel (the upscale models) needs torchvision, and transformers imports torchvision
whenever it is installed. On a CPU machine pip pins torch to its CPU build, but the only torchvision it can
get may be PyPI's CUDA build, whose `_C` extension links libtorch_cuda and fails to load. torchvision
catches that failure, then registers fake kernels for `torchvision::nms` in `_meta_registrations.py`
without checking that the op exists, and its import dies with "operator torchvision::nms does not exist",
taking every transformers import (CLIP) down with it. Neither spandrel nor flowrun uses torchvision's
compiled ops (spandrel uses only its pure-Python transforms), so when, and only when, the extension cannot
be loaded, declaring the two op schemas it would have declared lets the import go through; calling those
ops still fails, as it would anyway without the extension.

`make_importable()` must run before transformers, diffusers or spandrel are imported: flowrun.diffusion.offline
calls it, and everything that loads those libraries imports that module first. It imports torch only when
torchvision is installed; the light side (validation, planning) never imports this module.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# the op schemas of torchvision's _C that _meta_registrations.py registers fake kernels for
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None  # the torch.library.Library that holds the schemas: dropping it would unregister them


def extension_path() -> Path | None:
    """torchvision's compiled extension (_C*.so / _C*.pyd), found without importing torchvision; None when
    torchvision is not installed or ships no extension."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(p for p in Path(folder).glob("_C*") if p.suffix in (".so", ".pyd"))
        if found:
            return found[0]
    return None


def make_importable() -> bool:
    """Declare torchvision's op schemas if its extension is present but cannot be loaded into this torch.
    Returns whether it did (idempotent; does nothing once torchvision is imported)."""
    global _library
    import sys

    if _library is not None or "torchvision" in sys.modules:
        return False
    path = extension_path()
    if path is None:
        return False
    import torch

    try:
        torch.ops.load_library(str(path))  # what torchvision's import does first; loading twice is harmless
        return False
    except (ImportError, OSError):  # what torchvision's own loader catches, then carries on without its ops;
        pass  # e.g. the CUDA build beside the CPU torch: libtorch_cuda missing, undefined symbols
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _library = library
    return True
