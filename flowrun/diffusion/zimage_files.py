"""Z-Image files: tell them from their keys, read the transformer's configuration off its shapes, and build the
models on the meta device with the file's tensors (no second copy, no random init).

Layouts read:
- the transformer in its original layout (as ComfyUI's z_image_turbo_bf16.safetensors holds it: `x_embedder`,
  `final_layer`, `layers.N.attention.qkv` fused, `attention.out`, `q_norm` / `k_norm`, `x_pad_token`...), bare or
  under `model.diffusion_model.`, converted with diffusers' convert_z_image_transformer_checkpoint_to_diffusers;
  or in diffusers' layout (`all_x_embedder.2-1.*`, `layers.N.attention.to_q`...). Lumina 2's NextDiT has the
  same original names but no `x_pad_token`; it is refused by name (flowrun does not read Lumina 2);
- Qwen3 4B (CLIPLoader type lumina2, as ComfyUI's qwen_3_4b.safetensors: transformers' names under `model.`),
  Qwen3's `lm_head` ignored if present (the context is a hidden state).

Each part is held in the dtype the run's precision gives it (flowrun.diffusion.precision.part_dtypes: the
transformer in the run's dtype, fp8 files upcast to it at load; Qwen3 in float32 on the CPU, as every text encoder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.configs import ZIMAGE, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.weights import assign_weights, round_weights

UNET_PREFIXES = ("model.diffusion_model.", "model.")
TEXT_PREFIXES = ("text_encoders.qwen3_4b.transformer.model.", "text_encoders.qwen3_4b.transformer.", "model.")
_CORE = ("cap_embedder.1.weight", "t_embedder.mlp.0.weight", "x_pad_token", "cap_pad_token")
_LUMINA = ("cap_embedder.1.weight", "x_embedder.weight", "layers.0.attention.qkv.weight")


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def layout(keys) -> str | None:
    """"original", "diffusers", or None when the keys (prefix stripped) hold no Z-Image transformer."""
    keys = set(keys)
    if not all(k in keys for k in _CORE):
        return None
    if "x_embedder.weight" in keys and "layers.0.attention.qkv.weight" in keys:
        return "original"
    if any(k.startswith("all_x_embedder.") for k in keys) and "layers.0.attention.to_q.weight" in keys:
        return "diffusers"
    return None


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The transformer's keys without `model.diffusion_model.` or `model.`."""
    for prefix in UNET_PREFIXES:
        if layout(_part(state, prefix)) is not None:
            return _part(state, prefix)
    return state


def is_zimage(keys) -> bool:
    """Whether a state dict's keys hold a Z-Image transformer."""
    keys = list(keys)
    return any(layout(k[len(p):] if k.startswith(p) else k for k in keys) is not None for p in ("",) + UNET_PREFIXES)


def is_lumina2(keys) -> bool:
    """Whether the keys hold Lumina 2's NextDiT (Z-Image's names without its padding tokens)."""
    keys = list(keys)
    return any(all(p + k in keys for k in _LUMINA) for p in ("",) + UNET_PREFIXES) and not is_zimage(keys)


def _count(keys, head: str) -> int:
    return len({k[len(head):].split(".")[0] for k in keys if k.startswith(head)})


def transformer_config(shapes: dict[str, tuple]) -> dict[str, Any]:
    """ZImageTransformer2DModel's configuration read off a transformer's shapes (either layout, prefix stripped):
    widths, depths and heads; patch 2 x 2 x 1 frame, 16 channels and the rotary axes are Z-Image's."""
    from flowrun.diffusion.configs import ZIMAGE_TRANSFORMER

    dim, cap = shapes["cap_embedder.1.weight"]
    if layout(shapes) == "original":
        head_dim = shapes["layers.0.attention.q_norm.weight"][0]
        qkv = shapes["layers.0.attention.qkv.weight"][0]
        kv_heads = (qkv - dim) // 2 // head_dim
    else:
        head_dim = shapes["layers.0.attention.norm_q.weight"][0]
        kv_heads = shapes["layers.0.attention.to_k.weight"][0] // head_dim
    return {**ZIMAGE_TRANSFORMER, "dim": dim, "cap_feat_dim": cap, "n_layers": _count(shapes, "layers."),
            "n_refiner_layers": _count(shapes, "noise_refiner."), "n_heads": dim // head_dim, "n_kv_heads": kv_heads}


def build_transformer(state: dict[str, torch.Tensor], path, config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float32):
    """(configuration, ZImageTransformer2DModel) from a transformer state dict in either layout (prefix stripped
    or not), built on the meta device; `config` (a sidecar's) wins over shapes."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel

    state = strip_prefix(state)
    found = layout(state)
    if found is None:
        what = "a Lumina 2 transformer (flowrun reads Z-Image's, not Lumina 2's)" if is_lumina2(state) else (
            f"not a Z-Image transformer (keys like {sorted(state)[:3]})")
        raise CheckpointError(f"{path}: {what}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = dict(config) if config else transformer_config(shapes)
    if found == "original":  # the converter pops from the dict it is given
        state = convert_z_image_transformer_checkpoint_to_diffusers(dict(state))
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel(**config)
    assign_weights(transformer, state, "Z-Image transformer", path)
    return config, transformer.to(dtype).eval().requires_grad_(False)


def diffusion_model(network, config: ModelConfig, fingerprint: str, device: str = "cpu"):
    """The MODEL value of a Z-Image network adapter: on its flow schedule (shift 3, timestep sigma, as ComfyUI's
    supported_models.ZImage), latents seen as (latent - 0.1159) * 0.3611."""
    from flowrun.diffusion.flow_sampling import FlowSampling
    from flowrun.diffusion.model import DiffusionModel
    from flowrun.diffusion.zimage_network import latent_format

    network.to(device)
    dtype = next(network.parameters()).dtype
    return DiffusionModel(network, FlowSampling(3.0, multiplier=1.0), config, fingerprint, device=device,
                          dtype=dtype, latent_format=latent_format(int(network.config.in_channels)))


def load_transformer_file(state: dict[str, torch.Tensor], path: Path, config: ModelConfig | None, fingerprint: str,
                          device: str = "cpu", fp8: torch.dtype | None = None, dtype: torch.dtype = torch.float32):
    """MODEL from a Z-Image transformer file (UNETLoader): `config` from its sidecar, or None to read the shapes;
    weights held and computed in `dtype` (the run's); `fp8`: round every weight to that format first (as ComfyUI
    stores them)."""
    from flowrun.diffusion.zimage_network import ZImageNetwork

    base = copy.deepcopy(config) if config is not None else ModelConfig.default(ZIMAGE)
    state = strip_prefix(state)
    unet_config, transformer = build_transformer(state, path, config.unet if config is not None else None,
                                                 dtype)
    base.unet = unet_config
    if fp8 is not None:
        round_weights(transformer, fp8)
    return diffusion_model(ZImageNetwork(transformer), base, fingerprint, device)


def text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Qwen3 file's tensors in Qwen3Model's names: without `model.` (or a single file's prefix), no lm_head."""
    for prefix in TEXT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k: v for k, v in _part(state, prefix).items() if not k.startswith("lm_head.")}
    return {k: v for k, v in state.items() if not k.startswith("lm_head.")}


def is_qwen3_file(path: Path) -> bool:
    """Whether a .safetensors file holds a Qwen3 decoder, from its header alone (nothing loaded)."""
    from flowrun.diffusion import text_zimage
    from flowrun.diffusion.detect import read_header
    from flowrun.files import SAFE_SUFFIXES

    if path.suffix not in SAFE_SUFFIXES:
        return False
    return text_zimage.is_qwen3(text_state(read_header(path).shapes))


def _what(state: dict[str, Any]) -> str:
    """What a text-encoder state dict holds, in words, for an error."""
    from flowrun.diffusion import t5, text_auraflow, text_zimage

    if text_auraflow.is_pile_t5(state):
        return "AuraFlow's Pile-T5 XL"
    if t5.is_t5(state):
        return "a T5 v1.1 encoder (SD3's and Flux's T5-XXL)"
    if text_zimage.is_qwen_llm(state):
        return "a Qwen2 / Qwen2.5 decoder (no query / key norms)"
    clip_keys = ("transformer.resblocks.", "model.transformer.resblocks.")
    if any("text_model." in k or k.startswith(clip_keys) for k in state):
        return "a CLIP text encoder (SD1 / SD2 / SDXL / SD3)"
    return f"no Qwen3 decoder (keys like {sorted(state)[:3]})"


def load_text_encoder(path: Path, fingerprint: str, *, allow_pickle: bool = False):
    """CLIP (family zimage) from a Qwen3 file (CLIPLoader type lumina2). Another family's encoder is refused,
    named."""
    from flowrun.diffusion import text_zimage
    from flowrun.diffusion.model import TextEncoder
    from flowrun.diffusion.weights import read_state_dict, sidecar

    state = text_state(read_state_dict(path, allow_pickle))
    if not text_zimage.is_qwen3(state):
        raise CheckpointError(f"{path}: {_what(state)}; Z-Image (CLIPLoader type lumina2) reads Qwen3 4B")
    side = sidecar(path)
    config = ModelConfig.from_sidecar(side, ZIMAGE) if side else ModelConfig.default(ZIMAGE)
    config.family = ZIMAGE
    config.text_encoders = [text_zimage.config_from_state(state)]
    config.source = str(path)
    try:
        model = text_zimage.build(state)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return TextEncoder(text_zimage.tokenizer(), [model], config, fingerprint)
