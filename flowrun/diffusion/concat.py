"""Extra input channels for models whose UNet takes more than the noisy latent, as ComfyUI's concat_cond
(comfy/model_base.py): inpainting models take the mask, then the masked image's latent (1 + 4 channels,
the order of diffusers' StableDiffusionInpaintPipeline); instruct-pix2pix models take the source image's
latent unscaled (4 channels, as ComfyUI's IP2P and diffusers' StableDiffusionInstructPix2PixPipeline).

Inpainting: the mask is the entry's `concat_mask` (InpaintModelConditioning) or else the sampler's noise
mask, resized to the latent (bilinear, centre crop) and rounded to 0/1; the image is the entry's
`concat_latent` (scaled as the model's input) or else the latent being sampled. Without any mask the
model is told to paint everything: a mask of ones and the latent of a blank image.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from flowrun.diffusion.resize import upscale

# ComfyUI's blank_inpaint_image_like: SD1's scaled latent of a "zero" image, per channel; what an
# inpainting model sees as the masked image when it is given no mask at all
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def resize_to_batch_size(t: torch.Tensor, rows: int) -> torch.Tensor:
    """ComfyUI's utils.resize_to_batch_size: a batch stretched or thinned to `rows`, each row taken from
    the nearest source position (1 row stays 1: it broadcasts)."""
    have = t.shape[0]
    if have == rows or have == 1:
        return t
    if rows <= 1:
        return t[:rows]
    if rows < have:
        scale = (have - 1) / (rows - 1)
        index = [min(round(i * scale), have - 1) for i in range(rows)]
    else:
        scale = have / rows
        index = [min(math.floor((i + 0.5) * scale), have - 1) for i in range(rows)]
    return t[index]


def per_cell(conditioning: Any, rows: int, cells: int) -> Any:
    """`conditioning` for `cells` cells of `rows` rows sampled in one batch: each entry's concat latent and
    mask (of more than one row) resized to one cell's rows as ComfyUI does, then repeated for every cell,
    so that each cell's rows meet their own images."""
    if cells <= 1 or all(e.concat_latent is None and e.concat_mask is None for e in conditioning):
        return conditioning

    def spread(t: Any) -> Any:
        if t is None or torch.as_tensor(t).shape[0] <= 1:
            return t
        t = resize_to_batch_size(torch.as_tensor(t), rows)
        return t.repeat(cells, *([1] * (t.ndim - 1)))

    return conditioning.map(lambda e: e.replace(concat_latent=spread(e.concat_latent), concat_mask=spread(e.concat_mask)))


def _fit(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[b, c, h, w] at the latent's size: common_upscale(..., "bilinear", "center") when it differs."""
    t = torch.as_tensor(t).float()
    if tuple(t.shape[-2:]) != (h, w):
        t = upscale(t, w, h, "bilinear", "center")
    return t


def _mask_channel(cond: Any, denoise_mask: torch.Tensor | None, rows: int, h: int, w: int) -> torch.Tensor | None:
    mask = getattr(cond, "concat_mask", None)
    if mask is None:
        mask = denoise_mask
    if mask is None:
        return None
    mask = torch.as_tensor(mask).float()
    if mask.ndim == 4:
        mask = mask[:, :1]
    mask = _fit(mask.reshape((-1, 1) + tuple(mask.shape[-2:])), h, w)
    return resize_to_batch_size(mask.round(), rows)


def concat_channels(model: Any, cond: Any, latent: torch.Tensor, denoise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The channels appended to the model's input for conditioning entry `cond` (None when the model takes
    none); `latent` is the scaled start latent [rows, c, h, w], `denoise_mask` [rows, c, h, w] or None."""
    extra = int(model.unet.config.in_channels) - latent.shape[1]
    if extra <= 0:
        return None
    rows, channels, h, w = latent.shape
    source = getattr(cond, "concat_latent", None)
    if extra == channels:  # instruct-pix2pix: the source image's latent as the VAE gives it
        if source is None:
            return torch.zeros((1, channels, h, w), device=latent.device)
        return resize_to_batch_size(_fit(source, h, w), rows).to(latent.device)
    if extra != channels + 1:
        raise ValueError(f"the model takes {extra} input channels beside the latent's {channels}; flowrun "
                         f"knows inpainting models ({channels + 1}) and instruct-pix2pix models ({channels})")
    mask = _mask_channel(cond, denoise_mask, rows, h, w)
    if mask is None:
        blank = torch.tensor(BLANK_INPAINT_LATENT[:channels], device=latent.device).view(1, -1, 1, 1)
        return torch.cat([torch.ones((1, 1, h, w), device=latent.device), blank.expand(1, channels, h, w)], dim=1)
    if source is not None:
        image = model.latent_in(_fit(source, h, w))
    else:
        image = latent
    image = resize_to_batch_size(image, rows)
    if image.shape[0] != mask.shape[0]:  # one of them is a single row that stands for all
        n = max(image.shape[0], mask.shape[0])
        image, mask = image.expand(n, *image.shape[1:]), mask.expand(n, *mask.shape[1:])
    return torch.cat([mask.to(latent.device), image.to(latent.device)], dim=1)
