"""Tiny autoencoders (TAESD, TAESDXL) as VAELoader's `taesd` and `taesdxl`: an encoder and a decoder file in
models/vae_approx (`taesd_encoder.safetensors`, `taesd_decoder.safetensors`), on diffusers'
AutoencoderTiny, as ComfyUI loads them.

TAESD works in the diffusion model's scaled latent space; a LATENT holds the VAE's unscaled latent, so the
decoder gets latent * scale and the encoder's output is divided by it (ComfyUI's vae_scale: 0.18215 for
SD1/SD2, 0.13025 for SDXL). The original files are plain nn.Sequential state dicts; diffusers' layers
hold the same modules under `encoder.layers.N` and, since its decoder applies the input clamp in
forward instead of as layer 0, `decoder.layers.N-1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flowrun.diffusion.configs import SD1, SDXL, ModelConfig
from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.model import Vae

# name (flowrun.files.TINY_VAES) -> (family, scale); ComfyUI also knows taesd3 and taef1, for families
# flowrun does not have yet
TINY = {"taesd": (SD1, 0.18215), "taesdxl": (SDXL, 0.13025)}
CONFIG = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "act_fn": "relu", "upsample_fn": "nearest",
          "encoder_block_out_channels": [64, 64, 64, 64], "decoder_block_out_channels": [64, 64, 64, 64],
          "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1], "upsampling_scaling_factor": 2,
          "latent_magnitude": 3, "latent_shift": 0.5, "scaling_factor": 1.0, "force_upcast": False}


@dataclass
class _Posterior:
    """What vae.py reads of an encoder's output (AutoencoderKL gives a distribution; TAESD a point)."""

    latent: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.latent


class TinyAutoencoder(torch.nn.Module):
    """AutoencoderTiny with AutoencoderKL's interface over unscaled latents, so the VAE nodes (tiled or not)
    use either the same way."""

    def __init__(self, tiny, scale: float):
        super().__init__()
        self.tiny = tiny
        self.scale = scale

    def encode(self, pixels: torch.Tensor, return_dict: bool = False):
        return (_Posterior(self.tiny.encoder(pixels) / self.scale),)

    def decode(self, latent: torch.Tensor, return_dict: bool = False):
        return (self.tiny.decoder(latent * self.scale),)


def _state(encoder: dict, decoder: dict) -> dict[str, torch.Tensor]:
    """diffusers' AutoencoderTiny keys for the original files' nn.Sequential keys."""
    state = {f"encoder.layers.{k}": v for k, v in encoder.items()}
    for key, value in decoder.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) == 0:
            raise CheckpointError(f"unexpected TAESD decoder weight '{key}'")
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    return state


def load(name: str, encoder_path: Path, decoder_path: Path, fingerprint: str, *, device: str = "cpu",
         allow_pickle: bool = False) -> Vae:
    """The VAE value of tiny autoencoder `name` ("taesd", "taesdxl") from its two files."""
    from diffusers import AutoencoderTiny

    from flowrun.diffusion.checkpoint import read_state_dict

    family, scale = TINY[name]
    tiny = AutoencoderTiny(**CONFIG)
    state = _state(read_state_dict(encoder_path, allow_pickle), read_state_dict(decoder_path, allow_pickle))
    missing, unexpected = tiny.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{encoder_path.parent}: {name} files do not fit TAESD's layout: "
                              f"{len(missing)} weights missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:2]})")
    model = TinyAutoencoder(tiny.eval(), scale).to(device)
    config = ModelConfig.default(family)
    config.vae = {**config.vae, "latent_channels": 4, "block_out_channels": [64, 64, 64, 64], "scaling_factor": scale}
    return Vae(model, config, fingerprint)
