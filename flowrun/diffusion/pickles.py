"""Pickle files (.ckpt, .pt, .bin): read only when the person running flowrun allows it, and then with
torch.load(weights_only=True). The one place flowrun reads pickles (checkpoints, embeddings,
hypernetworks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.detect import CheckpointError


def read_pickle(path: Path, allow_pickle: bool, what: str = "checkpoints") -> Any:
    """A pickle file's contents, only with allow_pickle: a pickle can run code when loaded."""
    if not allow_pickle:
        convert = "convert it to .safetensors, or " if what != "hypernetworks" else ""  # A1111 wrote only .pt
        raise CheckpointError(f"{path}: pickle {what} ({path.suffix}) can run code when loaded and are refused; "
                              f"{convert}pass --allow-pickle if you trust its source")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch wraps the refusal of a non-tensor pickle in several exception types
        raise CheckpointError(f"{path}: cannot be read as a weights-only pickle: {exc}") from None
