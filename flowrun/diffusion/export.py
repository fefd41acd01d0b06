"""Save a model as one `.safetensors` in the original (LDM) layout: the format most users' checkpoints
come in, so models written here (test models, the bundled default model, CheckpointSave's) load through
the same path as theirs.

The model's configs travel in the file's metadata (`flowrun.config`), so a model of another size than its
family's default (the tiny test models) loads back from the one file; `save_single_file` also writes them
beside it as `<name>.json`, the sidecar users can edit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.configs import SD1, SD2, SDXL, SDXL_REFINER, ModelConfig
from flowrun.diffusion.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

CONFIG_KEY = "flowrun.config"
# modelspec (Stability AI's metadata convention, which ComfyUI's CheckpointSave writes) names per family
ARCHITECTURES = {SD1: "stable-diffusion-v1", SD2: "stable-diffusion-v2-512", SDXL: "stable-diffusion-xl-v1-base",
                 SDXL_REFINER: "stable-diffusion-xl-v1-refiner"}


def text_to_ldm(family: str, text_states: list[dict[str, Any]]) -> dict[str, Any]:
    """The text encoders' weights under the family's original-layout names."""
    if family == SD1:
        return clip_to_ldm(text_states[0])
    if family == SD2:
        return open_clip_to_ldm(text_states[0], "cond_stage_model.model.")
    if family == SDXL_REFINER:
        return open_clip_to_ldm(text_states[0], "conditioner.embedders.0.model.")
    if family == SDXL:
        clip_l = {k.replace("cond_stage_model.", "conditioner.embedders.0.", 1): v
                  for k, v in clip_to_ldm(text_states[0]).items()}
        return {**clip_l, **open_clip_to_ldm(text_states[1], "conditioner.embedders.1.model.")}
    raise ValueError(f"writing {family} checkpoints is not supported")


def ldm_state(config: ModelConfig, unet_state: dict, vae_state: dict, text_states: list[dict],
              dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """One original-layout state dict from the components' diffusers-layout weights, contiguous on the CPU."""
    state = {**unet_to_ldm(unet_state, config.unet), **vae_to_ldm(vae_state, config.vae),
             **text_to_ldm(config.family, [{k: v for k, v in s.items() if not k.endswith("position_ids")}
                                           for s in text_states])}
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return out


def ldm_state_dict(config: ModelConfig, unet: Any, vae: Any, text_encoder: Any, dtype: torch.dtype | None = None):
    """ldm_state for modules (one text encoder or a list)."""
    texts = text_encoder if isinstance(text_encoder, list) else [text_encoder]
    return ldm_state(config, unet.state_dict(), vae.state_dict(), [t.state_dict() for t in texts], dtype)


def file_metadata(config: ModelConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    """safetensors metadata: the configs (flowrun.config), modelspec keys, and `extra` text."""
    meta = {"format": "pt", "flowrun.family": config.family, CONFIG_KEY: json.dumps(config.as_json(), sort_keys=True),
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": ARCHITECTURES.get(config.family, ""),
            "modelspec.predict_key": {"v_prediction": "v"}.get(config.prediction_type, config.prediction_type)}
    if config.family == SD2 and config.prediction_type == "v_prediction":
        meta["modelspec.architecture"] = "stable-diffusion-v2-768-v"
    meta.update(extra or {})
    return meta


def checkpoint_bytes(config: ModelConfig, state: dict[str, torch.Tensor], extra: dict[str, str] | None = None) -> bytes:
    """The bytes of a .safetensors checkpoint holding `state` (original layout) and its metadata."""
    from safetensors.torch import save

    return save(state, metadata=file_metadata(config, extra))


def save_single_file(path: str | Path, config: ModelConfig, unet: Any, vae: Any, text_encoder: Any,
                     dtype: torch.dtype | None = None) -> Path:
    """Write PATH (.safetensors) and PATH with .json beside it; returns the checkpoint's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(checkpoint_bytes(config, ldm_state_dict(config, unet, vae, text_encoder, dtype)))
    path.with_suffix(".json").write_text(json.dumps(config.as_json(), indent=2) + "\n")
    return path
