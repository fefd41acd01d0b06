"""Qwen-Image's VAE (diffusers' AutoencoderKLQwenImage, a causal 3-D autoencoder of Wan 2.1's kind) seen as an
image autoencoder: flowrun's Vae value and vae.py give it [b, c, h, w] and read [b, c, h, w] back, so the wrapper
adds and removes the one-frame time axis, as ComfyUI's VAE does for a Qwen-Image latent.

Files: ComfyUI's qwen_image_vae.safetensors is in Wan 2.1's original layout (`encoder.conv1`, `decoder.head.*`,
`encoder.downsamples.*`), converted with diffusers' convert_wan_vae_to_diffusers (AutoencoderKLQwenImage names its
weights as AutoencoderKLWan does); diffusers' own layout (`encoder.conv_in`, `encoder.down_blocks.*`) is read as is.
"""

from __future__ import annotations

from typing import Any

import torch

ORIGINAL_MARK = "decoder.head.2.weight"  # Wan's original layout (the decoder's output convolution)
DIFFUSERS_MARK = "decoder.norm_out.gamma"


def is_qwen_image_vae(keys) -> bool:
    """Whether a state dict's keys (prefix stripped) hold a Wan-type causal VAE, in either layout."""
    keys = set(keys)
    return (ORIGINAL_MARK in keys and "encoder.conv1.weight" in keys) or (
        DIFFUSERS_MARK in keys and "encoder.conv_in.weight" in keys)


class _Frame:
    """The posterior of one frame, as AutoencoderKL's DiagonalGaussianDistribution is read by vae.py."""

    def __init__(self, dist):
        self.dist = dist

    def mode(self) -> torch.Tensor:
        return self.dist.mode()[:, :, 0]

    def sample(self, generator=None) -> torch.Tensor:
        return self.dist.sample(generator)[:, :, 0]


class QwenImageVae(torch.nn.Module):
    """encode(pixels [b, 3, h, w]) -> (posterior of [b, 16, h/8, w/8],); decode(latent) -> (pixels,)."""

    def __init__(self, autoencoder: torch.nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    @property
    def config(self):
        return self.autoencoder.config

    def encode(self, pixels: torch.Tensor, return_dict: bool = False) -> tuple[_Frame]:
        dist = self.autoencoder.encode(pixels.unsqueeze(2), return_dict=False)[0]
        return (_Frame(dist),)

    def decode(self, latent: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (self.autoencoder.decode(latent.unsqueeze(2), return_dict=False)[0][:, :, 0],)


def vae_config(state: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """`base` with the latent width read off the decoder's first convolution (either layout)."""
    conv = state.get("decoder.conv_in.weight", state.get("decoder.conv1.weight"))
    return {**base, "z_dim": int(conv.shape[1]), "latent_channels": int(conv.shape[1])}


def build(state: dict[str, torch.Tensor], config: dict[str, Any]) -> QwenImageVae:
    """QwenImageVae with `state`'s weights (either layout, prefix stripped), built on the meta device and given
    the tensors (a full-size meta state only counts parameters). ValueError when they do not fit."""
    from flowrun.diffusion import diffusers_models  # noqa: F401  (the module below without its package tree)
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    if ORIGINAL_MARK in state:  # the converter pops from the dict it is given
        state = convert_wan_vae_to_diffusers(dict(state))
    kwargs = {k: v for k, v in config.items() if k != "latent_channels"}
    with torch.device("meta"):
        autoencoder = AutoencoderKLQwenImage(**kwargs)
    try:
        missing, unexpected = autoencoder.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"Qwen-Image VAE weights do not fit its configuration: {str(exc)[:300]}") from None
    if missing or unexpected:
        raise ValueError(f"Qwen-Image VAE weights do not fit: {len(missing)} missing (e.g. {missing[:2]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    # float32 whatever the file stores, as flowrun's other VAEs (weights._instantiate): the same numbers everywhere
    return QwenImageVae(autoencoder.float().eval().requires_grad_(False))
