"""Extra input channels for models whose UNet takes more than the noisy latent, as ComfyUI's concat_cond:
inpainting models (the mask, then the masked image's latent: 1 + 4 channels) and instruct-pix2pix models
(the source image's latent, unscaled, as diffusers' pipeline feeds it: 4 channels).

The source is the entry's `concat_latent` (InpaintModelConditioning, InstructPixToPixConditioning) or,
for an inpainting model without one, the latent being sampled with the sampler's noise mask; without a
mask either, a blank image and a mask of ones (inpaint everything), as ComfyUI does.
"""

from __future__ import annotations

from typing import Any

import torch


def _resized(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    t = t.float()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if tuple(t.shape[-2:]) != (h, w):
        t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear")
    return t


def _to_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows or t.shape[0] == 1:
        return t
    return t.repeat(-(-rows // t.shape[0]), *([1] * (t.ndim - 1)))[:rows]


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
        return _to_rows(_resized(torch.as_tensor(source), h, w), rows).to(latent.device)
    if extra != channels + 1:
        raise ValueError(f"the model takes {extra} input channels beside the latent's {channels}; flowrun "
                         f"knows inpainting models ({channels + 1}) and instruct-pix2pix models ({channels})")
    mask = getattr(cond, "concat_mask", None)
    if mask is not None:
        mask = _to_rows(_resized(torch.as_tensor(mask), h, w)[:, :1], rows)
    elif denoise_mask is not None:
        mask = denoise_mask[:, :1]
    if source is not None:
        image = model.latent_in(_to_rows(_resized(torch.as_tensor(source), h, w), rows))
    elif mask is not None:
        image = latent
    else:
        image = None
    if image is None or mask is None:
        mask = torch.ones((1, 1, h, w), device=latent.device)
        image = model.latent_in(torch.zeros((1, channels, h, w), device=latent.device))
    return torch.cat([mask.to(latent.device), image.to(latent.device)], dim=1)
