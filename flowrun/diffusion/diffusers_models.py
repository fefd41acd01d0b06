"""The diffusers model classes flowrun builds, imported from their own modules without running the
`__init__` of the packages that hold them.

diffusers' `models.unets`, `models.autoencoders` and `models.transformers` packages import every model
class they have when first touched (some sixty transformers and thirty autoencoders, for video, audio and
3D), although UNet2DConditionModel needs two of those modules. Measured with `python -X importtime` on the
2-core development machine, skipping those `__init__`s takes README's first command from ~4.4 s to
~2.2 s of diffusers imports (flowrun/benchmarks/startup.py). A skipped package runs its real `__init__`
the first time someone asks it for a name it lacks, so `from diffusers.models.unets import X` elsewhere
still works.
"""

from __future__ import annotations

import importlib.util
import sys

from flowrun.diffusion import offline  # noqa: F401  (hub libraries offline, torchvision importable)

_PACKAGES = ("diffusers.models.unets", "diffusers.models.autoencoders", "diffusers.models.transformers")


def _without_init(name: str) -> None:
    """Register package `name` with its search path but without running its `__init__` (yet)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return
    package = importlib.util.module_from_spec(spec)

    def complete(attr: str):
        # a name the package's __init__ defines was asked for: run it now (once), then answer
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = complete
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)


for _name in _PACKAGES:
    _without_init(_name)

from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL  # noqa: E402,F401
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # noqa: E402,F401
