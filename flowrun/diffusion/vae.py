"""Pixels <-> latents through the VAE. IMAGE values are float32 numpy [B, H, W, C] in 0..1; LATENT
samples are the VAE's unscaled latents (the model's scale factor is applied by the sampler)."""

from __future__ import annotations

import numpy as np
import torch

from flowrun.diffusion.model import Vae


def decode(vae: Vae, samples: torch.Tensor) -> np.ndarray:
    model = vae.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    with torch.no_grad():
        pixels = model.decode(samples.to(device, dtype), return_dict=False)[0].float()
    pixels = torch.clamp((pixels + 1.0) / 2.0, 0.0, 1.0)
    return pixels.movedim(1, -1).cpu().numpy().astype(np.float32)


def _cropped(vae: Vae, images: np.ndarray) -> torch.Tensor:
    """NCHW pixels of the images after a centred crop to a multiple of the VAE's downscale factor, as
    ComfyUI crops them."""
    f = vae.downscale
    h, w = (images.shape[1] // f) * f, (images.shape[2] // f) * f
    if h == 0 or w == 0:
        raise ValueError(f"image of {images.shape[2]}x{images.shape[1]} is smaller than the VAE's {f}x{f} cell")
    y0, x0 = (images.shape[1] % f) // 2, (images.shape[2] % f) // 2
    return torch.from_numpy(np.ascontiguousarray(images[:, y0:y0 + h, x0:x0 + w, :3])).movedim(-1, 1)


def encode(vae: Vae, images: np.ndarray) -> torch.Tensor:
    """The posterior mean of each image (deterministic), after a centred crop to a multiple of the VAE's
    downscale factor as ComfyUI does."""
    pixels = _cropped(vae, images)
    model = vae.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    with torch.no_grad():
        dist = model.encode((pixels * 2.0 - 1.0).to(device, dtype), return_dict=False)[0]
    return dist.mode().float().cpu()


def decode_tiled(vae: Vae, samples: torch.Tensor, tile: int, overlap: int) -> np.ndarray:
    """`decode` in tiles of `tile` x `tile` latent pixels overlapping by `overlap`, three tilings averaged
    (ComfyUI's VAEDecodeTiled): the decoder's memory is bounded by the tile."""
    from flowrun.diffusion.tiling import three_pass

    model = vae.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype

    def run(piece: torch.Tensor) -> torch.Tensor:
        return model.decode(piece.to(device, dtype), return_dict=False)[0].float()

    with torch.no_grad():
        pixels = three_pass(samples.float(), run, tile, overlap, vae.downscale, 3, first_wide=True)
    pixels = torch.clamp((pixels + 1.0) / 2.0, 0.0, 1.0)
    return pixels.movedim(1, -1).numpy().astype(np.float32)


def encode_tiled(vae: Vae, images: np.ndarray, tile: int, overlap: int) -> torch.Tensor:
    """`encode` in tiles of `tile` x `tile` pixels overlapping by `overlap`, three tilings averaged
    (ComfyUI's VAEEncodeTiled)."""
    from flowrun.diffusion.tiling import three_pass

    f = vae.downscale
    pixels = _cropped(vae, images)
    model = vae.model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    channels = int(vae.config.vae.get("latent_channels", 4))

    def run(piece: torch.Tensor) -> torch.Tensor:
        return model.encode((piece * 2.0 - 1.0).to(device, dtype), return_dict=False)[0].mode().float()

    with torch.no_grad():
        return three_pass(pixels.float(), run, tile, overlap, 1.0 / f, channels, first_wide=False)
