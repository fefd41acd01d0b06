"""Save an SD1-family model as one `.safetensors` in the original layout, plus its `<name>.json` configs.

This is the format most users' checkpoints come in, so models written here (test models, the bundled
default model) load through the same path as theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.configs import SD1, ModelConfig
from flowrun.diffusion.ldm_layout import clip_to_ldm, unet_to_ldm, vae_to_ldm


def ldm_state_dict(config: ModelConfig, unet: Any, vae: Any, text_encoder: Any, dtype: torch.dtype | None = None):
    if config.family != SD1:
        raise ValueError(f"writing {config.family} checkpoints is not supported (SD1 only)")
    state = {**unet_to_ldm(unet.state_dict(), config.unet), **vae_to_ldm(vae.state_dict(), config.vae),
             **clip_to_ldm({k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")})}
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return out


def save_single_file(path: str | Path, config: ModelConfig, unet: Any, vae: Any, text_encoder: Any,
                     dtype: torch.dtype | None = None) -> Path:
    """Write PATH (.safetensors) and PATH with .json beside it; returns the checkpoint's path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(config, unet, vae, text_encoder, dtype), str(path),
              metadata={"format": "pt", "flowrun.family": config.family})
    path.with_suffix(".json").write_text(json.dumps(config.as_json(), indent=2) + "\n")
    return path
