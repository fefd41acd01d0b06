"""Flux.1 transformer files: the transformer alone (UNETLoader: BFL's layout with or without ComfyUI's
`model.diffusion_model.`, or diffusers') and inside whole checkpoints (CheckpointLoaderSimple, which reads
the rest of such a file in flowrun.diffusion.checkpoint; DualCLIPLoader type flux reads the text encoders
in flowrun.diffusion.components), and the MODEL value made of it.

The transformer's configuration is read off the weights (width, depth, input channels: 64 dev / schnell,
384 Fill, 128 Canny / Depth; guidance embedding: dev yes, schnell no); a sidecar `<name>.json` gives what the
weights cannot (a toy model's rotary axes). Networks are built on the meta device and given the file's
tensors (assign), each cast on its own to the dtype the run's precision gives the part
(flowrun.diffusion.precision.part_dtypes: the transformer in the run's dtype, fp8 files upcast to it at
load; the autoencoder and text encoders as precision.py chooses for them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from flowrun.diffusion import flux_layout
from flowrun.diffusion.configs import FLUX, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.precision import PartDtypes

# where ComfyUI's whole Flux checkpoints keep the other parts
VAE_PREFIX = "vae."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
LATENT_SCALE, LATENT_SHIFT = 0.3611, 0.1159  # ComfyUI's latent_formats.Flux: (latent - shift) * scale
FP8 = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e4m3fn_fast": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def is_flux(keys) -> bool:
    """Whether weight names hold a Flux.1 transformer (BFL layout, prefixed or not, or diffusers')."""
    keys = set(keys)
    bfl = {k[len(flux_layout.PREFIX):] if k.startswith(flux_layout.PREFIX) else k for k in keys}
    if "img_in.weight" in bfl and "vector_in.in_layer.weight" in bfl and any(k.startswith("double_blocks.") for k in bfl):
        return True
    return "x_embedder.weight" in keys and any(k.startswith("single_transformer_blocks.") for k in keys) \
        and "time_text_embed.text_embedder.linear_1.weight" in keys


def kind(config: dict) -> str:
    """What a transformer configuration is, in words (for messages and the README)."""
    channels = config["in_channels"] // 4
    base = "dev" if config.get("guidance_embeds") else "schnell"
    return {16: f"Flux.1 {base}", 32: f"Flux.1 {base} Canny/Depth", 96: f"Flux.1 {base} Fill"}.get(
        channels, f"Flux.1-type ({channels} input channels)")


def transformer_parts(state: dict[str, torch.Tensor], path: Path | None, base: ModelConfig | None = None
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(FluxTransformer2DModel config, its weights in diffusers' layout, not yet converted) from a file's
    tensors; `base`: a sidecar's configs, whose rotary axes are taken when the weights do not say."""
    axes = (base.unet.get("axes_dims_rope") if base is not None else None)
    try:
        if flux_layout.is_bfl(state):
            stripped = flux_layout.strip_prefix(state)
            config = flux_layout.config_from_bfl(stripped, axes)
            return config, stripped
        return flux_layout.config_from_diffusers(state, axes), state
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: a Flux transformer whose configuration cannot be read off its weights "
                              f"({exc})") from None


def build_transformer(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path | None,
                      dtype: torch.dtype = torch.float32):
    """FluxTransformer2DModel built on the meta device and given `state`'s tensors (BFL layout converted),
    in `dtype` (meta tensors stay meta: the full-size layout is checked without memory)."""
    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not any(k.startswith("transformer_blocks.") for k in state):  # BFL layout
        state = flux_layout.to_diffusers(state, shapes)
    state = {k: v.to(dtype) if v.is_floating_point() and not v.is_meta else v for k, v in state.items()}
    wrong = [(k, shapes[k], tuple(v.shape)) for k, v in state.items() if k in shapes and shapes[k] != tuple(v.shape)]
    if wrong:
        k, want, got = wrong[0]
        raise CheckpointError(f"{path}: Flux transformer weight {k} has shape {got}, the configuration read from the "
                              f"file expects {want}")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"{path}: Flux transformer weights do not fit: missing {missing[:3]} ({len(missing)}), "
                              f"unexpected {unexpected[:3]} ({len(unexpected)})")
    return model.eval().requires_grad_(False)


def load_state(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
               ) -> tuple[ModelConfig, Any, list[Any], Any]:
    """(config, transformer, [clip_l, t5xxl], autoencoder) of a whole Flux checkpoint, its parts under ComfyUI's
    prefixes (CheckpointLoaderSimple: flowrun.diffusion.checkpoint dispatches here), each in its `dtypes`
    (None: float32); a part it lacks is an error naming the prefix."""
    config, transformer, texts, vae = parts(state, path, side, dtypes)
    return config, transformer(), texts(), vae()


def parts(state: dict[str, torch.Tensor], path: Path, side: Path | None, dtypes: PartDtypes | None = None
          ) -> tuple[ModelConfig, Callable, Callable, Callable]:
    """(config, and functions building the transformer, [clip_l, t5xxl] and the autoencoder) of a whole Flux
    checkpoint: the configuration is read off the weights now, each part is built when its function is called
    (checkpoint.load_bundle builds them on first use, flowrun.diffusion.lazy)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from flowrun.diffusion import t5
    from flowrun.diffusion.diffusers_models import AutoencoderKL
    from flowrun.diffusion.precision import ALL_FLOAT32
    from flowrun.diffusion.weights import _instantiate, _load_text

    dtypes = dtypes or ALL_FLOAT32
    base = ModelConfig.from_sidecar(side, FLUX) if side else None
    config_unet, weights = transformer_parts({k: v for k, v in state.items() if k.startswith(flux_layout.PREFIX)},
                                             path, base)
    config = dataclasses.replace(base or ModelConfig.default(FLUX), unet=config_unet, source=str(side or path))
    found = {}
    for prefix, what in ((VAE_PREFIX, "autoencoder"), (CLIP_L_PREFIX, "CLIP-L text encoder"),
                         (T5_PREFIX, "T5-XXL text encoder")):
        found[prefix] = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not found[prefix]:
            raise CheckpointError(f"{path}: a Flux transformer without its {what} ('{prefix}*'): load the transformer "
                                  "with UNETLoader and the other parts with DualCLIPLoader (type flux) and VAELoader")
    t5_state = found[T5_PREFIX]
    config.text_encoders = [config.text_encoders[0], t5.config_from_state(t5_state)]

    def texts() -> list[Any]:
        clip_l = _load_text(config.text_encoders[0], found[CLIP_L_PREFIX], False, "CLIP-L text encoder", path,
                            dtypes.text)
        return [clip_l, t5.build(t5_state, dtypes.text)]

    def vae():
        # the autoencoder as SD checkpoints' is read, with the 16-channel configuration (no quant convolutions)
        vae_state = convert_ldm_vae_checkpoint(found[VAE_PREFIX], config.vae)
        return _instantiate(lambda: AutoencoderKL(**config.vae), vae_state, "VAE", path, dtypes.vae)

    return config, lambda: build_transformer(config_unet, weights, path, dtypes.unet), texts, vae


def sampling(config: dict[str, Any]):
    """The model's default schedule, as ComfyUI's model configs: a guidance-distilled model (dev) on Flux's
    schedule with shift (mu) 1.15 (ModelSamplingFlux's default); schnell on a plain flow, shift 1,
    timestep = sigma (its sampling_settings multiplier 1.0, shift 1.0)."""
    from flowrun.diffusion.flow_sampling import FlowSampling, FluxSampling

    return FluxSampling(1.15) if config.get("guidance_embeds") else FlowSampling(1.0, multiplier=1.0)


def diffusion_model(transformer, config: ModelConfig, fingerprint: str, device: str = "cpu",
                    dtype: torch.dtype | None = None):
    """The MODEL value of a loaded transformer (or a lazy.Deferred one, held in `dtype`): the adapter, the
    default schedule, Flux's latent format."""
    from flowrun.diffusion.flux_network import FluxNetwork
    from flowrun.diffusion.lazy import Deferred
    from flowrun.diffusion.model import DiffusionModel

    if isinstance(transformer, Deferred):
        network = Deferred(lambda: FluxNetwork(transformer.get()).to(device))
    else:
        network, dtype = FluxNetwork(transformer).to(device), transformer.dtype
    channels = (config.unet.get("out_channels") or config.unet["in_channels"]) // 4
    latent_format = ([LATENT_SHIFT] * channels, [1.0] * channels, [LATENT_SCALE] * channels)
    return DiffusionModel(network, sampling(config.unet), config, fingerprint, device=device,
                          dtype=dtype, latent_format=latent_format)


def load_unet(state: dict[str, torch.Tensor], path: Path, fingerprint: str, side: ModelConfig | None = None, *,
              device: str = "cpu", weight_dtype: str = "default", dtype: torch.dtype = torch.float32):
    """MODEL from a Flux transformer file (UNETLoader); `side`: its sidecar's configs; held and computed in
    `dtype` (the run's: an fp8 or bf16 file upcast or cast to it). An fp8 `weight_dtype` rounds the weights to
    that format first, as ComfyUI stores them."""
    config_unet, weights = transformer_parts(state, path, side)
    if weight_dtype in FP8:
        fp8 = getattr(torch, FP8[weight_dtype])
        weights = {k: v.to(fp8) if v.is_floating_point() else v for k, v in weights.items()}
    transformer = build_transformer(config_unet, weights, path, dtype)
    config = dataclasses.replace(side or ModelConfig.default(FLUX), unet=config_unet, source=str(path))
    return diffusion_model(transformer, config, fingerprint, device)
