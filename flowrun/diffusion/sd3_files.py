"""SD3 / SD3.5 files: tell them from their keys, read the MMDiT's configuration off its shapes, and build the
models on the meta device with the file's tensors (no second copy, no random init).

Layouts read:
- the transformer in the original MMDiT layout (`joint_blocks.N.x_block.*`, `context_block.*`, `x_embedder`,
  `pos_embed`...), with or without the checkpoint prefix `model.diffusion_model.`, converted with diffusers'
  convert_sd3_transformer_checkpoint_to_diffusers; or in diffusers' layout (`transformer_blocks.N.*`);
- single files as stabilityai and ComfyUI ship them: the transformer under `model.diffusion_model.`, the
  16-channel VAE under `first_stage_model.`, and whichever text encoders it includes under
  `text_encoders.clip_l.transformer.`, `text_encoders.clip_g.transformer.` (transformers' CLIP layout) and
  `text_encoders.t5xxl.transformer.` (T5EncoderModel's), as ComfyUI's supported_models.SD3 reads them.

The variant is read off the weights: depth from the blocks, width from the patch embedding, SD3.5's q/k
RMS norms (`ln_q`), SD3.5 medium's second attention in the first 13 blocks (`x_block.attn2`), the position
table's size. SD3.5 large turbo has SD3.5 large's network (a distilled copy): the weights cannot tell them apart.
Text-encoder files on their own are read by sd3_text_files. Each part is held in the dtype the run's
precision gives it (flowrun.diffusion.precision.part_dtypes: the transformer in the run's dtype, fp8 files
upcast to it at load; the VAE and text encoders as precision.py chooses for them), whatever the file stores.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import torch

from flowrun.diffusion.configs import SD3, SD3_TRANSFORMERS, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.weights import assign_weights, round_weights
from flowrun.diffusion.precision import PartDtypes

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "text_encoders.clip_l.transformer."
CLIP_G = "text_encoders.clip_g.transformer."
T5XXL = "text_encoders.t5xxl.transformer."
_ORIGINAL = "joint_blocks.0.x_block.attn.qkv.weight"
_DIFFUSERS = ("transformer_blocks.0.attn.add_q_proj.weight", "context_embedder.weight", "pos_embed.proj.weight")


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """The transformer's keys without `model.diffusion_model.` (the other parts of a single file left out)."""
    if any(k.startswith(UNET) for k in state):
        return {k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}
    return state


def layout(keys) -> str | None:
    """"original" (MMDiT), "diffusers", or None when the keys (prefix stripped) hold no SD3 transformer."""
    keys = set(keys)
    if _ORIGINAL in keys:
        return "original"
    if all(k in keys for k in _DIFFUSERS):
        return "diffusers"
    return None


def is_sd3(keys) -> bool:
    """Whether a state dict's keys hold an SD3 / SD3.5 transformer (a transformer file or a single file)."""
    keys = list(keys)
    return layout(k[len(UNET):] if k.startswith(UNET) else k for k in keys) is not None


def _indices(keys, head: str, tail: str) -> list[int]:
    return sorted({int(k[len(head):].split(".")[0]) for k in keys if k.startswith(head) and k.endswith(tail)})


def transformer_config(shapes: dict[str, tuple], head_dim: int | None = None) -> dict[str, Any]:
    """SD3Transformer2DModel's configuration read off a transformer's shapes (either layout, prefix stripped).
    The head width is read from the q/k norms where the model has them, else 64 (every published SD3)."""
    if layout(shapes) == "original":
        hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
        blocks = _indices(shapes, "joint_blocks.", ".x_block.attn.qkv.weight")
        norm_q = "joint_blocks.0.x_block.attn.ln_q.weight"
        dual = _indices(shapes, "joint_blocks.", ".x_block.attn2.qkv.weight")
        pooled, out, positions = (shapes["y_embedder.mlp.0.weight"][1], shapes["final_layer.linear.weight"][0],
                                  shapes["pos_embed"][1])
    else:
        hidden, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
        blocks = _indices(shapes, "transformer_blocks.", ".attn.to_q.weight")
        norm_q = "transformer_blocks.0.attn.norm_q.weight"
        dual = _indices(shapes, "transformer_blocks.", ".attn2.to_q.weight")
        pooled = shapes["time_text_embed.text_embedder.linear_1.weight"][1]
        out, positions = shapes["proj_out.weight"][0], shapes["pos_embed.pos_embed"][1]
    qk_norm = norm_q in shapes
    head_dim = head_dim or (shapes[norm_q][0] if qk_norm else 64)
    caption, joint = shapes["context_embedder.weight"]
    return {
        "sample_size": 128, "patch_size": patch, "in_channels": in_channels, "num_layers": len(blocks),
        "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim, "joint_attention_dim": joint,
        "caption_projection_dim": caption, "pooled_projection_dim": pooled, "out_channels": out // (patch * patch),
        "pos_embed_max_size": math.isqrt(positions), "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if qk_norm else None,
    }


def variant(config: dict[str, Any]) -> str:
    """The published model a transformer configuration is ("sd3.5 large" also stands for large turbo), or a
    description of an SD3-type network of another size."""
    for name, known in SD3_TRANSFORMERS.items():
        if all(config.get(k) == v for k, v in known.items() if k != "sample_size"):
            return name
    return f"an SD3-type MMDiT of {config['num_layers']} blocks, {config['num_attention_heads']} heads"


def build_transformer(state: dict[str, torch.Tensor], path, config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float32):
    """(configuration, SD3Transformer2DModel) from a transformer state dict in either layout (prefix stripped
    or not), built on the meta device and given the tensors; `config` (a sidecar's) wins over the shapes."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel

    state = strip_prefix(state)
    found = layout(state)
    if found is None:
        raise CheckpointError(f"{path}: not an SD3 transformer: expected 'joint_blocks.*' (original layout) or "
                              f"'transformer_blocks.*' (diffusers layout), found keys like {sorted(state)[:3]}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = dict(config) if config else transformer_config(shapes)
    if found == "original":  # the converter pops from the dict it is given
        state = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    # each tensor cast on its own as it is assigned: never a second whole copy of the weights
    state = {k: v.to(dtype) if v.is_floating_point() and not v.is_meta else v for k, v in state.items()}
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**config)
    assign_weights(transformer, state, "SD3 transformer", path)
    return config, transformer.to(dtype).eval().requires_grad_(False)


def _part(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_state(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
               ) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, network adapter, [clip_l, clip_g, t5] with None for one the file lacks, vae) of an SD3 single
    file, each part in its `dtypes` (None: float32); also on the meta device (tests map the full-size layouts
    this way)."""
    config, network, texts, vae = parts(state, path, side, dtypes)
    return config, network(), texts(), vae()


def parts(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
          ) -> tuple[ModelConfig, Callable, Callable, Callable]:
    """(config, and functions building the network adapter, the text encoders and the VAE) of
    an SD3 single file: the configuration is read off the shapes now, each part is built when its function
    is called (checkpoint.load_bundle builds them on first use, flowrun.diffusion.lazy)."""
    from flowrun.diffusion import t5
    from flowrun.diffusion.precision import ALL_FLOAT32
    from flowrun.diffusion.sd3_network import SD3Network
    from flowrun.diffusion.weights import _load_text, build_vae, vae_config

    config = ModelConfig.from_sidecar(side, SD3) if side else ModelConfig.default(SD3)
    if config.family != SD3:
        raise CheckpointError(f"{path}: its keys say sd3, its config {config.source} says {config.family}")
    dtypes = dtypes or ALL_FLOAT32
    unet_state = strip_prefix(state)
    if not side:
        config.unet = transformer_config({k: tuple(v.shape) for k, v in unet_state.items()})
    vae_state = _part(state, VAE)
    if "decoder.conv_in.weight" not in vae_state:
        raise CheckpointError(f"{path}: an SD3 transformer without a VAE under '{VAE}*' (a transformer file: load it "
                              "with UNETLoader and the VAE with VAELoader)")
    if not side:
        config.vae = vae_config(vae_state, config.vae)
    t5_state = _part(state, T5XXL)
    if t5.is_t5(t5_state):
        config.text_encoders[2] = t5.config_from_state(t5_state)
    config.source = str(path)

    def network():
        return SD3Network(build_transformer(unet_state, path, config.unet, dtypes.unet)[1])

    def texts() -> list[Any]:
        built: list[Any] = [None, None, None]
        if CLIP_L + "text_model.final_layer_norm.weight" in state:
            built[0] = _load_text(config.text_encoders[0], _part(state, CLIP_L), False, "CLIP-L text encoder", path,
                                  dtypes.text)
        if CLIP_G + "text_model.final_layer_norm.weight" in state:
            built[1] = _load_text(config.text_encoders[1], _part(state, CLIP_G), True, "CLIP-G text encoder", path,
                                  dtypes.text)
        if t5.is_t5(t5_state):
            try:
                built[2] = t5.build(t5_state, dtypes.text)
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
        return built

    return config, network, texts, lambda: build_vae(vae_state, config.vae, path, dtypes.vae)


def diffusion_model(network, config: ModelConfig, fingerprint: str, device: str = "cpu",
                    dtype: torch.dtype | None = None):
    """The MODEL value of an SD3 network adapter (or a lazy.Deferred one, held in `dtype`): on SD3's flow
    schedule (shift 3.0, timestep 1000 sigma, as ComfyUI's supported_models.SD3), latents seen as
    (latent - 0.0609) * 1.5305."""
    from flowrun.diffusion.flow_sampling import FlowSampling
    from flowrun.diffusion.lazy import placed
    from flowrun.diffusion.model import DiffusionModel
    from flowrun.diffusion.sd3_network import latent_format

    network, dtype = placed(network, device, dtype)
    return DiffusionModel(network, FlowSampling(3.0, multiplier=1000.0), config, fingerprint, device=device,
                          dtype=dtype, latent_format=latent_format(int(config.unet.get("in_channels", 16))))


def load_transformer_file(state: dict[str, torch.Tensor], path: Path, config: ModelConfig | None, fingerprint: str,
                          device: str = "cpu", fp8: torch.dtype | None = None, dtype: torch.dtype = torch.float32):
    """MODEL from an SD3 transformer file (UNETLoader): `config` from its sidecar, or None to read the
    shapes; weights held and computed in `dtype` (the run's); `fp8`: round every weight to that format first
    (as ComfyUI stores them)."""
    from flowrun.diffusion.sd3_network import SD3Network

    base = copy.deepcopy(config) if config is not None else ModelConfig.default(SD3)
    unet_config, transformer = build_transformer(state, path, config.unet if config is not None else None, dtype)
    base.unet = unet_config
    if fp8 is not None:
        round_weights(transformer, fp8)
    return diffusion_model(SD3Network(transformer), base, fingerprint, device)

