"""SigLIP vision models (Zhai et al. 2023) as CLIP_VISION values: the image encoder Flux's Redux reads
(ComfyUI's sigclip_vision_patch14_384.safetensors, SigLIP so400m at 384 px), on transformers'
SiglipVisionModel. Its file is in transformers' layout (`vision_model.*`); it is told from CLIP's by the
patch embedding's bias and the missing class token. Pixels are normalised with mean and std 0.5, and the
last hidden state is taken after the final layer norm, as both ComfyUI and transformers give it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.detect import CheckpointError

PREFIX = "vision_model."
MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
HEADS = {1152: 16, 768: 12}  # so400m, base: heads cannot be read off the weights


def with_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The weights under `vision_model.` (ComfyUI's files have it; some transformers versions save without)."""
    if any(k.startswith(PREFIX) for k in state):
        return state
    return {PREFIX + k: v for k, v in state.items()}


def is_siglip(state: dict[str, Any]) -> bool:
    """Whether transformers-layout vision weights (prefixed) are SigLIP's (a patch bias, no class token)."""
    return PREFIX + "embeddings.patch_embedding.bias" in state and PREFIX + "embeddings.class_embedding" not in state


def config_from_shapes(shapes: dict[str, tuple[int, ...]], file: str, given: dict | None = None) -> dict[str, Any]:
    """SiglipVisionConfig fields of a SigLIP vision file; `given` (a sidecar's `clip_vision`) fills and overrides."""
    patch = shapes[PREFIX + "embeddings.patch_embedding.weight"]
    positions = shapes[PREFIX + "embeddings.position_embedding.weight"][0]
    width, side = patch[0], patch[2]
    layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith(PREFIX + "encoder.layers."))
    config = {"hidden_size": width, "patch_size": side, "image_size": math.isqrt(positions) * side,
              "num_hidden_layers": layers, "intermediate_size": shapes[PREFIX + "encoder.layers.0.mlp.fc1.weight"][0],
              "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": PREFIX + "head.probe" in shapes}
    given = dict(given or {})
    if width in HEADS:
        config["num_attention_heads"] = HEADS[width]
    elif "num_attention_heads" not in given:
        raise CheckpointError(f"{file}: a SigLIP vision model of width {width}, which is none flowrun knows (1152 "
                              f"so400m, 768 base); give its heads in {Path(file).with_suffix('.json')} as "
                              '{"clip_vision": {"num_attention_heads": ...}}')
    config.update(given)
    return config


def build(state: dict[str, torch.Tensor], file: str, given: dict | None = None):
    """SiglipVisionModel with the file's weights, its config read off their shapes."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from flowrun.diffusion.checkpoint import _instantiate

    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, file, given)
    with torch.device("meta"):
        prefixed = any(k.startswith(PREFIX) for k in SiglipVisionModel(SiglipVisionConfig(**config)).state_dict())
    if not prefixed:  # this transformers version names the weights without the prefix
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    return _instantiate(lambda: SiglipVisionModel(SiglipVisionConfig(**config)), state, "SigLIP vision", Path(file))
