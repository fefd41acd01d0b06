"""Keep the model-hub libraries offline. Must run before diffusers, transformers or huggingface_hub are
imported: a hub call made without these variables can hang for minutes on a network that does not answer."""

from __future__ import annotations

import os

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
