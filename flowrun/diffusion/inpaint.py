"""Pixels and masks made ready for inpainting, as ComfyUI's VAEEncodeForInpaint and
InpaintModelConditioning prepare them: the mask stretched to the image (bilinear), both cropped to a
multiple of the VAE's cell (centred), the masked pixels set to mid grey (0.5, the "zero" of the VAE's
-1..1 range: what diffusers' StableDiffusionInpaintPipeline gives its masked image), and the mask grown
by a box kernel so the repainted region covers the seam in latent space."""

from __future__ import annotations

import math

import numpy as np
import torch


def mask_to_image(mask: np.ndarray, height: int, width: int) -> torch.Tensor:
    """A MASK ([h, w] or [b, h, w]) as [b, 1, height, width], stretched bilinearly if its size differs
    (ComfyUI resizes rather than refuses)."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    m = m.reshape((-1, 1) + tuple(m.shape[-2:]))
    return torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear")


def crop_to_cell(pixels: np.ndarray, mask: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NHWC pixels (a copy, 3 channels) and their [b, 1, h, w] mask, centre-cropped to multiples of `cell`."""
    h, w = (pixels.shape[1] // cell) * cell, (pixels.shape[2] // cell) * cell
    if h == 0 or w == 0:
        raise ValueError(f"image of {pixels.shape[2]}x{pixels.shape[1]} is smaller than the VAE's {cell}x{cell} cell")
    y0, x0 = (pixels.shape[1] % cell) // 2, (pixels.shape[2] % cell) // 2
    out = torch.from_numpy(np.array(pixels[:, y0:y0 + h, x0:x0 + w, :3], dtype=np.float32))
    return out, mask[:, :, y0:y0 + h, x0:x0 + w]


def grey_masked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pixels with mid grey where the (rounded) mask is 1."""
    keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
    return (pixels - 0.5) * keep + 0.5


def grow(mask: torch.Tensor, by: int) -> torch.Tensor:
    """The rounded mask dilated by a `by` x `by` box (ComfyUI's padding of ceil((by - 1) / 2); an even box
    reaches one pixel further down and right, and the result keeps the mask's size)."""
    if by == 0:
        return mask
    h, w = mask.shape[-2:]
    kernel = torch.ones((1, 1, by, by))
    grown = torch.nn.functional.conv2d(mask.round(), kernel, padding=math.ceil((by - 1) / 2))
    return torch.clamp(grown, 0, 1)[:, :, :h, :w]


def check_mask_batch(mask: torch.Tensor, images: int) -> None:
    """One mask for all images or one per image: any other count cannot be paired."""
    if mask.shape[0] not in (1, images):
        choices = "one mask" if images == 1 else f"1 or {images} masks"
        raise ValueError(f"input 'mask': {mask.shape[0]} masks for {images} image(s); give {choices}")
