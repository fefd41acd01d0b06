"""What a conditioning entry gives a Flux model beside the prompt, as ComfyUI's Flux model (comfy/model_base.py)
builds it: the extra input channels of Fill and Canny/Depth models (concat_cond) and Kontext's reference
latents (ReferenceLatent's `extra["reference_latents"]`).

- Canny/Depth models (twice the latent's channels in): the control image's latent, scaled as the model's
  input (process_latent_in), resized to the latent (bilinear, centre crop); zeros without one.
- Fill models (more): that latent (the masked image's, from InpaintModelConditioning), then the mask at
  pixel size cut into 8x8 blocks, 64 channels per latent pixel (FluxFillPipeline's mask packing); without
  a mask, ones (paint everything).
"""

from __future__ import annotations

from typing import Any

import torch

from flowrun.diffusion.concat import resize_to_batch_size
from flowrun.diffusion.resize import upscale

REFERENCE_LATENTS = "reference_latents"  # CondEntry.extra key: VAE latents [1, c, h, w] Kontext sees


def _fit(t: Any, h: int, w: int) -> torch.Tensor:
    t = torch.as_tensor(t).float()
    if tuple(t.shape[-2:]) != (h, w):
        t = upscale(t, w, h, "bilinear", "center")
    return t


def concat_channels(model: Any, cond: Any, latent: torch.Tensor, denoise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The channels appended to a Flux model's input for `cond` (None for a model that takes none);
    `latent` is the scaled start latent [rows, c, h, w], `denoise_mask` [rows, c, h, w] or None."""
    wanted = int(model.unet.config.in_channels)
    rows, channels, h, w = latent.shape
    if wanted <= channels:
        return None
    source = getattr(cond, "concat_latent", None)
    image = torch.zeros((1, channels, h, w)) if source is None else _fit(source, h, w)
    image = model.latent_in(resize_to_batch_size(image, rows))
    if wanted <= 2 * channels:
        return image.to(latent.device)
    mask = getattr(cond, "concat_mask", None)
    if mask is None:
        mask = denoise_mask
    if mask is None:
        mask = torch.ones((1, 1, h, w))
    mask = torch.as_tensor(mask).float()
    if mask.ndim < 4:  # [h, w] or [b, h, w]
        mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    mask = mask.mean(dim=1, keepdim=True)
    mask = _fit(mask, h * 8, w * 8)
    b = mask.shape[0]
    mask = mask.view(b, h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(b, 64, h, w)
    mask = resize_to_batch_size(mask, rows)
    if image.shape[0] != mask.shape[0]:  # one of them is a single row that stands for all
        n = max(image.shape[0], mask.shape[0])
        image, mask = image.expand(n, *image.shape[1:]), mask.expand(n, *mask.shape[1:])
    extra = wanted - channels
    if image.shape[1] + mask.shape[1] != extra:
        raise ValueError(f"the Flux model takes {extra} input channels beside the latent's {channels}; flowrun knows "
                         f"Canny/Depth models ({channels}) and Fill models ({channels + 64})")
    return torch.cat([image, mask], dim=1).to(latent.device)


def reference_latents(model: Any, cond: Any) -> tuple[torch.Tensor, ...]:
    """The entry's reference latents as the model's input scales them (Kontext), in order."""
    refs = cond.extra.get(REFERENCE_LATENTS) or ()
    return tuple(model.latent_in(torch.as_tensor(r).float()) for r in refs)
