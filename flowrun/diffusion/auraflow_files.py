"""AuraFlow files: tell them from their keys, read the transformer's configuration off its shapes, and build the
models on the meta device with the file's tensors (no second copy, no random init).

Layouts read:
- the transformer in fal's original layout (`double_layers.N.attn.w2q`, `single_layers.N.*`, `cond_seq_linear`,
  `init_x_linear`, `positional_encoding`, `register_tokens`, `modF`...), bare or under `model.` (as
  aura_flow_0.3.safetensors holds it; ComfyUI's fallback prefix) or `model.diffusion_model.`, converted with
  diffusers' convert_auraflow_transformer_checkpoint_to_diffusers; or in diffusers' layout
  (`joint_transformer_blocks.N.*`, `single_transformer_blocks.N.*`);
- the single file fal publishes (as ComfyUI's supported_models.AuraFlow reads it): the transformer, SDXL's VAE
  under `vae.` (original or diffusers layout) and the Pile-T5 XL encoder under
  `text_encoders.pile_t5xl.transformer.` (transformers' layout);
- a Pile-T5 XL file on its own (CLIPLoader: ComfyUI tells it from its weights, whatever the type).

The attention's head width has no weight of its own: 256 (every published AuraFlow) unless a sidecar says
otherwise. Each part is held in the dtype the run's precision gives it (flowrun.diffusion.precision.part_dtypes:
the transformer in the run's dtype, fp8 files upcast to it at load; the VAE and Pile-T5 as precision.py chooses).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import torch

from flowrun.diffusion.configs import AURAFLOW, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.weights import assign_weights, round_weights
from flowrun.diffusion.precision import PartDtypes

UNET_PREFIXES = ("model.diffusion_model.", "model.")
VAE_PREFIXES = ("vae.", "first_stage_model.")
PILE_T5 = "text_encoders.pile_t5xl.transformer."
TEXT_PREFIXES = (PILE_T5, "text_encoders.pile_t5xl.", "transformer.")
_ORIGINAL = ("double_layers.0.attn.w2q.weight", "single_layers.0.attn.w1q.weight")
_DIFFUSERS = ("register_tokens", "pos_embed.proj.weight", "time_step_proj.linear_1.weight")
HEAD_DIM = 256


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The transformer's keys without `model.diffusion_model.` or `model.` (the other parts of a file left out)."""
    for prefix in UNET_PREFIXES:
        if layout(_part(state, prefix)) is not None:
            return _part(state, prefix)
    return state


def layout(keys) -> str | None:
    """"original" (fal's), "diffusers", or None when the keys (prefix stripped) hold no AuraFlow transformer."""
    keys = set(keys)
    if "cond_seq_linear.weight" in keys and any(k in keys for k in _ORIGINAL):
        return "original"
    if all(k in keys for k in _DIFFUSERS) and ("joint_transformer_blocks.0.attn.to_q.weight" in keys
                                               or "single_transformer_blocks.0.attn.to_q.weight" in keys):
        return "diffusers"
    return None


def is_auraflow(keys) -> bool:
    """Whether a state dict's keys hold an AuraFlow transformer (a transformer file or a single file)."""
    keys = list(keys)
    return any(layout(k[len(p):] if k.startswith(p) else k for k in keys) is not None for p in ("",) + UNET_PREFIXES)


def _count(keys, head: str) -> int:
    return len({k[len(head):].split(".")[0] for k in keys if k.startswith(head)})


def transformer_config(shapes: dict[str, tuple], head_dim: int = HEAD_DIM, in_channels: int = 4) -> dict[str, Any]:
    """AuraFlowTransformer2DModel's configuration read off a transformer's shapes (either layout, prefix stripped).
    The patch embedding holds patch * patch * channels inputs: `in_channels` (SDXL's VAE: 4) tells them apart."""
    if layout(shapes) == "original":
        hidden, patch_in = shapes["init_x_linear.weight"]
        positions = shapes["positional_encoding"][1]
        caption, joint = shapes["cond_seq_linear.weight"]
        patch_out = shapes["final_linear.weight"][0]
        double, single = _count(shapes, "double_layers."), _count(shapes, "single_layers.")
    else:
        hidden, patch_in = shapes["pos_embed.proj.weight"]
        positions = shapes["pos_embed.pos_embed"][1]
        caption, joint = shapes["context_embedder.weight"]
        patch_out = shapes["proj_out.weight"][0]
        double, single = _count(shapes, "joint_transformer_blocks."), _count(shapes, "single_transformer_blocks.")
    patch = math.isqrt(patch_in // in_channels)
    return {
        "sample_size": 64, "patch_size": patch, "in_channels": in_channels, "num_mmdit_layers": double,
        "num_single_dit_layers": single, "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": joint, "caption_projection_dim": caption, "out_channels": patch_out // (patch * patch),
        "pos_embed_max_size": positions,
    }


def build_transformer(state: dict[str, torch.Tensor], path, config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float32):
    """(configuration, AuraFlowTransformer2DModel reading positions as ComfyUI) from a transformer state dict in
    either layout (prefix stripped or not), built on the meta device; `config` (a sidecar's) wins over shapes."""
    from diffusers.loaders.single_file_utils import convert_auraflow_transformer_checkpoint_to_diffusers

    from flowrun.diffusion.auraflow_network import use_comfy_positions
    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.transformers.auraflow_transformer_2d import AuraFlowTransformer2DModel

    state = strip_prefix(state)
    found = layout(state)
    if found is None:
        raise CheckpointError(f"{path}: not an AuraFlow transformer: expected 'double_layers.*' (original layout) or "
                              f"'joint_transformer_blocks.*' (diffusers layout), found keys like {sorted(state)[:3]}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = dict(config) if config else transformer_config(shapes)
    if found == "original":  # the converter pops from the dict it is given
        state = convert_auraflow_transformer_checkpoint_to_diffusers(dict(state))
        state = {k: v for k, v in state.items() if v is not None}  # it names every layer's slots, filled or not
    with torch.device("meta"):
        transformer = AuraFlowTransformer2DModel(**config)
    assign_weights(transformer, state, "AuraFlow transformer", path)
    return config, use_comfy_positions(transformer.to(dtype).eval().requires_grad_(False))


def load_pile_t5(state: dict[str, torch.Tensor], path, dtype: torch.dtype = torch.float32) -> Any:
    """The Pile-T5 encoder of a state dict in transformers' layout (prefix stripped), in `dtype`."""
    from flowrun.diffusion import text_auraflow

    try:
        return text_auraflow.build(state).to(dtype)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_state(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
               ) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, network adapter, [pile_t5], vae) of an AuraFlow single file, each part in its `dtypes` (None:
    float32); also on the meta device (tests map the full-size layout this way)."""
    config, network, texts, vae = parts(state, path, side, dtypes)
    return config, network(), texts(), vae()


def parts(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
          ) -> tuple[ModelConfig, Callable, Callable, Callable]:
    """(config, and functions building the network adapter, [pile_t5] and the VAE) of an AuraFlow single file: the
    configuration is read off the shapes now, each part is built when its function is called
    (checkpoint.load_bundle builds them on first use, flowrun.diffusion.lazy)."""
    from flowrun.diffusion import text_auraflow
    from flowrun.diffusion.auraflow_network import AuraFlowNetwork
    from flowrun.diffusion.precision import ALL_FLOAT32
    from flowrun.diffusion.weights import build_vae, vae_config

    config = ModelConfig.from_sidecar(side, AURAFLOW) if side else ModelConfig.default(AURAFLOW)
    if config.family != AURAFLOW:
        raise CheckpointError(f"{path}: its keys say auraflow, its config {config.source} says {config.family}")
    dtypes = dtypes or ALL_FLOAT32
    unet_state = strip_prefix(state)
    if not side:
        config.unet = transformer_config({k: tuple(v.shape) for k, v in unet_state.items()})
    vae_state = next((_part(state, p) for p in VAE_PREFIXES if any(k.startswith(p) for k in state)), {})
    if "decoder.conv_in.weight" not in vae_state:
        raise CheckpointError(f"{path}: an AuraFlow transformer without a VAE under 'vae.*' (a transformer file: load "
                              "it with UNETLoader, the VAE with VAELoader and the Pile-T5 encoder with CLIPLoader)")
    if not side:
        config.vae = vae_config(vae_state, config.vae)
    t5_state = _part(state, PILE_T5)
    if text_auraflow.is_pile_t5(t5_state):
        config.text_encoders = [text_auraflow.config_from_state(t5_state)]
    config.source = str(path)

    def network():
        return AuraFlowNetwork(build_transformer(unet_state, path, config.unet, dtypes.unet)[1])

    def texts() -> list[Any]:
        return [load_pile_t5(t5_state, path, dtypes.text) if text_auraflow.is_pile_t5(t5_state) else None]

    return config, network, texts, lambda: build_vae(vae_state, config.vae, path, dtypes.vae)


def diffusion_model(network, config: ModelConfig, fingerprint: str, device: str = "cpu",
                    dtype: torch.dtype | None = None):
    """The MODEL value of an AuraFlow network adapter (or a lazy.Deferred one, held in `dtype`): on its flow
    schedule (shift 1.73, timestep sigma, as ComfyUI's supported_models.AuraFlow), latents seen as latent * 0.13025."""
    from flowrun.diffusion.auraflow_network import latent_format
    from flowrun.diffusion.flow_sampling import FlowSampling
    from flowrun.diffusion.lazy import placed
    from flowrun.diffusion.model import DiffusionModel

    network, dtype = placed(network, device, dtype)
    return DiffusionModel(network, FlowSampling(1.73, multiplier=1.0), config, fingerprint, device=device,
                          dtype=dtype, latent_format=latent_format(int(config.unet.get("in_channels", 4))))


def load_transformer_file(state: dict[str, torch.Tensor], path: Path, config: ModelConfig | None, fingerprint: str,
                          device: str = "cpu", fp8: torch.dtype | None = None, dtype: torch.dtype = torch.float32):
    """MODEL from an AuraFlow transformer file (UNETLoader): `config` from its sidecar, or None to read the shapes;
    weights held and computed in `dtype` (the run's); `fp8`: round every weight to that format first (as ComfyUI
    stores them)."""
    from flowrun.diffusion.auraflow_network import AuraFlowNetwork

    base = copy.deepcopy(config) if config is not None else ModelConfig.default(AURAFLOW)
    state = strip_prefix(state)
    unet_config, transformer = build_transformer(state, path, config.unet if config is not None else None, dtype)
    base.unet = unet_config
    if fp8 is not None:
        round_weights(transformer, fp8)
    return diffusion_model(AuraFlowNetwork(transformer), base, fingerprint, device)


def text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A text-encoder file's tensors without the prefix a single file or ComfyUI's saver puts before them."""
    for prefix in TEXT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return _part(state, prefix)
    return state


def is_pile_t5_file(path: Path) -> bool:
    """Whether a .safetensors file holds a Pile-T5 encoder, from its header alone (nothing loaded)."""
    from flowrun.diffusion import text_auraflow
    from flowrun.diffusion.detect import read_header
    from flowrun.files import SAFE_SUFFIXES

    if path.suffix not in SAFE_SUFFIXES:
        return False
    return text_auraflow.is_pile_t5(text_state(read_header(path).shapes))


def load_text_encoder(path: Path, fingerprint: str, *, allow_pickle: bool = False):
    """CLIP (family auraflow) from a Pile-T5 XL file; ComfyUI's CLIPLoader tells one from its weights whatever
    its type. Another T5 (SD3's or Flux's T5-XXL) or a CLIP is refused, named."""
    from flowrun.diffusion import t5, text_auraflow
    from flowrun.diffusion.weights import read_state_dict, sidecar
    from flowrun.diffusion.model import TextEncoder

    state = text_state(read_state_dict(path, allow_pickle))
    if not text_auraflow.is_pile_t5(state):
        found = ("a T5 v1.1 encoder (SD3's and Flux's T5-XXL)" if t5.is_t5(state) else
                 f"no Pile-T5 encoder (keys like {sorted(state)[:3]})")
        raise CheckpointError(f"{path}: {found}; AuraFlow reads Pile-T5 XL (a UMT5: position biases in every layer)")
    side = sidecar(path)
    config = ModelConfig.from_sidecar(side, AURAFLOW) if side else ModelConfig.default(AURAFLOW)
    config.family = AURAFLOW
    config.text_encoders = [text_auraflow.config_from_state(state)]
    config.source = str(path)
    return TextEncoder(text_auraflow.tokenizer(), [load_pile_t5(state, path)], config, fingerprint)

