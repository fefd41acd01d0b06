"""Qwen-Image files (ComfyUI's split files): tell them from their keys, read the configuration off the shapes, and
build the models on the meta device with the file's tensors (no second copy, no random init).

Layouts read:
- the transformer (qwen_image_bf16 / _fp8_e4m3fn.safetensors, diffusion_models/): diffusers' key names
  (`img_in`, `txt_norm`, `txt_in`, `transformer_blocks.N.img_mod.1`, `...attn.add_q_proj`, `proj_out`), as
  ComfyUI's model names them too, bare or under `model.diffusion_model.` / `model.`;
- the text encoder (qwen_2.5_vl_7b.safetensors, text_encoders/): Qwen2.5-VL's checkpoint, the text model under
  `model.` (or transformers 5's `model.language_model.`, or ComfyUI's saver's `qwen25_7b.transformer.model.`);
  `visual.*` and `lm_head.*` are not read;
- the VAE (qwen_image_vae.safetensors, vae/): see qwen_image_vae.
ComfyUI's "scaled fp8" files (a `.scale_weight` beside each fp8 weight) are multiplied back out at load.

Each part is held in the dtype the run's precision gives it (flowrun.diffusion.precision.part_dtypes: the
transformer in the run's dtype, fp8 files upcast to it at load; the VAE as precision.py chooses for VAEs; Qwen2.5-VL
in float32 on the CPU, as every text encoder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.configs import QWEN_IMAGE, QWEN_IMAGE_TRANSFORMER, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.weights import assign_weights, round_weights

UNET_PREFIXES = ("model.diffusion_model.", "model.")
TEXT_PREFIXES = ("text_encoders.qwen25_7b.transformer.model.", "qwen25_7b.transformer.model.",
                 "model.language_model.", "model.")
VAE_PREFIXES = ("vae.", "first_stage_model.")
_MARKERS = ("img_in.weight", "txt_norm.weight", "txt_in.weight", "transformer_blocks.0.img_mod.1.weight")
SHIFT = 1.15  # ComfyUI's supported_models.QwenImage sampling_settings (multiplier 1.0)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_transformer(keys) -> bool:
    keys = set(keys)
    return all(k in keys for k in _MARKERS)


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The transformer's keys without `model.diffusion_model.` or `model.`."""
    for prefix in UNET_PREFIXES:
        part = _part(state, prefix)
        if _is_transformer(part):
            return part
    return state


def is_qwen_image(keys) -> bool:
    """Whether a state dict's keys hold a Qwen-Image transformer (bare or under a prefix)."""
    keys = list(keys)
    return any(_is_transformer(k[len(p):] if k.startswith(p) else k for k in keys) for p in ("",) + UNET_PREFIXES)


def _count(keys, head: str) -> int:
    return len({k[len(head):].split(".")[0] for k in keys if k.startswith(head)})


def transformer_config(shapes: dict[str, tuple]) -> dict[str, Any]:
    """QwenImageTransformer2DModel's configuration read off a transformer's shapes (prefix stripped): depth, head
    width (the q norm's), heads, text width; the patch stays 2 and the rotary axes Qwen-Image's."""
    inner, in_channels = shapes["img_in.weight"]
    head = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    patch = int(QWEN_IMAGE_TRANSFORMER["patch_size"])
    return {**QWEN_IMAGE_TRANSFORMER, "in_channels": in_channels,
            "out_channels": shapes["proj_out.weight"][0] // patch ** 2,
            "num_layers": _count(shapes, "transformer_blocks."), "attention_head_dim": head,
            "num_attention_heads": inner // head, "joint_attention_dim": shapes["txt_in.weight"][1]}


def build_transformer(state: dict[str, torch.Tensor], path, config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float32):
    """(configuration, QwenImageTransformer2DModel) from a transformer state dict, built on the meta device;
    `config` (a sidecar's) wins over the shapes."""
    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

    state = strip_prefix(state)
    if not _is_transformer(state):
        raise CheckpointError(f"{path}: not a Qwen-Image transformer: expected {', '.join(_MARKERS[:3])}, found keys "
                              f"like {sorted(state)[:3]}")
    config = dict(config) if config else transformer_config({k: tuple(v.shape) for k, v in state.items()})
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**config)
    assign_weights(transformer, state, "Qwen-Image transformer", path)
    # the rotary tables are plain tensors, neither weights nor buffers: the meta device left them empty
    rope = transformer.pos_embed
    transformer.pos_embed = type(rope)(theta=rope.theta, axes_dim=list(rope.axes_dim), scale_rope=rope.scale_rope)
    return config, transformer.to(dtype).eval().requires_grad_(False)


def diffusion_model(network, config: ModelConfig, fingerprint: str, device: str = "cpu"):
    """The MODEL value of a Qwen-Image network adapter: on its flow schedule (shift 1.15, timestep sigma, as
    ComfyUI's supported_models.QwenImage), latents seen as Wan 2.1's per-channel (latent - mean) / std."""
    from flowrun.diffusion.flow_sampling import FlowSampling
    from flowrun.diffusion.model import DiffusionModel
    from flowrun.diffusion.qwen_image_network import latent_format

    network.to(device)
    dtype = next(network.parameters()).dtype
    return DiffusionModel(network, FlowSampling(SHIFT, multiplier=1.0), config, fingerprint, device=device,
                          dtype=dtype, latent_format=latent_format())


def load_transformer_file(state: dict[str, torch.Tensor], path: Path, config: ModelConfig | None, fingerprint: str,
                          device: str = "cpu", fp8: torch.dtype | None = None, dtype: torch.dtype = torch.float32):
    """MODEL from a Qwen-Image transformer file (UNETLoader): `config` from its sidecar, or None to read the shapes;
    weights held and computed in `dtype` (the run's); `fp8`: round every weight to that format first (as ComfyUI
    stores them)."""
    from flowrun.diffusion.qwen_image_network import QwenImageNetwork

    base = copy.deepcopy(config) if config is not None else ModelConfig.default(QWEN_IMAGE)
    base.family = QWEN_IMAGE
    state = strip_prefix(unscaled(state))
    unet_config, transformer = build_transformer(state, path, config.unet if config is not None else None, dtype)
    base.unet = unet_config
    if fp8 is not None:
        round_weights(transformer, fp8)
    return diffusion_model(QwenImageNetwork(transformer), base, fingerprint, device)


def unscaled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ComfyUI "scaled fp8" state dict (qwen_2.5_vl_7b_fp8_scaled: fp8 weights with a `.scale_weight` each and a
    `scaled_fp8` marker) with every such weight multiplied back out in float32; other state dicts as they are."""
    if not any(k.endswith(".scale_weight") for k in state):
        return state
    out = {k: v for k, v in state.items()
           if not k.endswith((".scale_weight", ".scale_input")) and k.rsplit(".", 1)[-1] != "scaled_fp8"}
    for key, scale in state.items():
        if key.endswith(".scale_weight"):
            weight = key[:-len("scale_weight")] + "weight"
            out[weight] = out[weight].float() * scale.float()
    return out


def text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text model's tensors of a Qwen2.5-VL file (`visual.*`, `lm_head.*` left out), prefix stripped."""
    from flowrun.diffusion import text_qwen_image

    for prefix in TEXT_PREFIXES:
        part = _part(state, prefix)
        if text_qwen_image.is_qwen25(part):
            return part
    return state


def _found(state: dict[str, Any]) -> str:
    """What a text-encoder file that is not Qwen2.5-VL holds, in words."""
    from flowrun.diffusion import t5, text_auraflow

    if any(k.endswith("self_attn.q_norm.weight") for k in state):
        return "a Qwen3 text encoder (Z-Image's)"
    if any(text_auraflow.is_pile_t5(_part(state, p)) for p in ("", "text_encoders.pile_t5xl.transformer.")):
        return "a Pile-T5 encoder (AuraFlow's)"
    if t5.is_t5(state) or any(".SelfAttention." in k for k in state):
        return "a T5 encoder (SD3's and Flux's T5-XXL)"
    if any("token_embedding" in k for k in state):
        return "a CLIP text encoder"
    return f"no Qwen2.5-VL text model (keys like {sorted(state)[:3]})"


def load_text_encoder(path: Path, fingerprint: str, *, allow_pickle: bool = False):
    """CLIP (family qwen_image) from a Qwen2.5-VL file (CLIPLoader type qwen_image), in float32 on the CPU as
    every text encoder (flowrun.diffusion.precision); a text encoder of another family is refused, named."""
    from flowrun.diffusion import text_qwen_image
    from flowrun.diffusion.model import TextEncoder
    from flowrun.diffusion.precision import ALL_FLOAT32
    from flowrun.diffusion.weights import read_state_dict, sidecar

    raw = read_state_dict(path, allow_pickle)
    state = text_state(unscaled(raw))
    if not text_qwen_image.is_qwen25(state):
        raise CheckpointError(f"{path}: {_found(raw)}; CLIPLoader type qwen_image reads Qwen2.5-VL 7B "
                              "(qwen_2.5_vl_7b.safetensors)")
    side = sidecar(path)
    config = ModelConfig.from_sidecar(side, QWEN_IMAGE) if side else ModelConfig.default(QWEN_IMAGE)
    config.family = QWEN_IMAGE
    text_config = config.text_encoders[0] if side else text_qwen_image.config_from_state(state)
    config.text_encoders = [text_config]
    config.source = str(path)
    try:
        model = text_qwen_image.build(state, text_config, ALL_FLOAT32.text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return TextEncoder(text_qwen_image.tokenizer(), [model], config, fingerprint)


def load_vae(state: dict[str, torch.Tensor], path: Path, config: ModelConfig | None, fingerprint: str,
             device: str = "cpu", dtype: torch.dtype = torch.float32):
    """VAE value from a Qwen-Image VAE file (VAELoader): Wan 2.1's original layout or diffusers', held in `dtype`
    (precision.py's for VAEs on `device`)."""
    from flowrun.diffusion import qwen_image_vae
    from flowrun.diffusion.model import Vae

    state = next((_part(state, p) for p in VAE_PREFIXES if any(k.startswith(p) for k in state)), state)
    base = copy.deepcopy(config) if config is not None else ModelConfig.default(QWEN_IMAGE)
    base.family = QWEN_IMAGE
    if config is None:
        base.vae = qwen_image_vae.vae_config(state, base.vae)
    try:
        vae = qwen_image_vae.build(state, base.vae)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return Vae(vae.to(device, dtype), base, fingerprint)
