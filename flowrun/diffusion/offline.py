"""Keep the model-hub libraries offline, and let them import. Must run before diffusers, transformers,
huggingface_hub or spandrel are imported: a hub call made without these variables can hang for minutes on a
network that does not answer, and a torchvision whose compiled extension does not fit this torch would
break their import (see torchvision_compat)."""

from __future__ import annotations

import os

from flowrun.diffusion import torchvision_compat

_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}


def go_offline() -> None:
    """Set the hub libraries' offline switches (idempotent; values the user set are kept)."""
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)


go_offline()
torchvision_compat.make_importable()
