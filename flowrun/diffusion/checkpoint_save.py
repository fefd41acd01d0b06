"""A MODEL, CLIP and VAE as the bytes of one original-layout checkpoint, their patches baked in
(ComfyUI's CheckpointSave): the weights written are those the patched models compute with."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flowrun.diffusion.export import checkpoint_bytes, ldm_state
from flowrun.diffusion.lora import patched_weight
from flowrun.diffusion.model import PREDICTION_TYPES, DiffusionModel, TextEncoder, Vae


def baked_state(module: Any, patches: tuple) -> dict[str, Any]:
    """The module's state dict with every patched weight replaced by its patched copy (the module itself
    is left as it is)."""
    state = dict(module.state_dict())
    for target in dict.fromkeys(p.target for p in patches):
        state[target] = patched_weight(module, patches, target)
    return state


def _plain(config: dict) -> dict:
    """A component config without diffusers' bookkeeping keys (`_class_name`, ...), as JSON can hold it."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def saved_checkpoint(model: DiffusionModel, clip: TextEncoder, vae: Vae, extra: dict[str, str]) -> bytes:
    """The .safetensors bytes; raises ValueError when the three are not parts of one family's model."""
    if clip.family != model.family:
        raise ValueError(f"the model is {model.family} but the clip is {clip.family}: a checkpoint holds one "
                         "family's parts")
    prediction = model.sampling.prediction_type
    config = replace(model.config, unet=_plain(model.config.unet), vae=_plain(vae.config.vae),
                     text_encoders=[_plain(c) for c in clip.config.text_encoders],
                     prediction_type=prediction if prediction in PREDICTION_TYPES else model.config.prediction_type)
    unet_state = baked_state(model.unet, model.patches)
    text_states = [baked_state(m, tuple(p for index, p in clip.patches if index == i))
                   for i, m in enumerate(clip.models)]
    state = ldm_state(config, unet_state, vae.model.state_dict(), text_states)
    return checkpoint_bytes(config, state, extra)
