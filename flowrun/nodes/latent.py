"""Latent nodes: EmptyLatentImage, LatentUpscale, LatentUpscaleBy, VAEEncode, VAEDecode.
LATENT values are ComfyUI's: {"samples": tensor [batch, 4, height/8, width/8]} holding unscaled latents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.image import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, node

LatentUpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic"]
Crop = Literal["disabled", "center"]


class EmptyLatentParams(NodeParams):
    width: int = Field(512, ge=16, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(512, ge=16, le=MAX_RESOLUTION, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=4096)


@node("EmptyLatentImage", params=EmptyLatentParams, outputs={"latent": ports.LATENT}, category="latent")
def empty_latent_image(p: EmptyLatentParams, ctx):
    """A batch of zero latents for an image of width x height."""
    import torch

    return {"samples": torch.zeros([p.batch_size, 4, p.height // 8, p.width // 8])}


def upscale(samples, width: int, height: int, method: str, crop: str):
    """ComfyUI's common_upscale on an NCHW tensor: optional centre crop to the new aspect, then resize."""
    import numpy as np
    import torch

    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        from PIL import Image

        out = []
        for img in samples:
            pil = Image.fromarray(np.clip(255.0 * img.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8))
            pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
            out.append(torch.from_numpy(np.array(pil).astype(np.float32) / 255.0).movedim(-1, 0))
        return torch.stack(out)
    return torch.nn.functional.interpolate(samples, size=(height, width), mode=method)


class LatentUpscaleParams(NodeParams):
    upscale_method: LatentUpscaleMethod = "nearest-exact"
    width: int = Field(512, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(512, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    crop: Crop = "disabled"


@node("LatentUpscale", params=LatentUpscaleParams, inputs={"samples": ports.LATENT}, outputs={"latent": ports.LATENT},
      category="latent")
def latent_upscale(p: LatentUpscaleParams, ctx, *, samples):
    """Resize latents to width x height pixels (0 keeps the aspect from the other side)."""
    s = samples["samples"]
    width, height = p.width, p.height
    if width == 0 and height == 0:
        return dict(samples)
    if width == 0:
        width = max(64, round(s.shape[3] * height / s.shape[2]))
    elif height == 0:
        height = max(64, round(s.shape[2] * width / s.shape[3]))
    return {**samples, "samples": upscale(s, width // 8, height // 8, p.upscale_method, p.crop)}


class LatentUpscaleByParams(NodeParams):
    upscale_method: LatentUpscaleMethod = "nearest-exact"
    scale_by: float = Field(1.5, ge=0.01, le=8.0)


@node("LatentUpscaleBy", params=LatentUpscaleByParams, inputs={"samples": ports.LATENT},
      outputs={"latent": ports.LATENT}, category="latent")
def latent_upscale_by(p: LatentUpscaleByParams, ctx, *, samples):
    """Resize latents by a factor (hires fix)."""
    s = samples["samples"]
    width, height = round(s.shape[3] * p.scale_by), round(s.shape[2] * p.scale_by)
    return {**samples, "samples": upscale(s, width, height, p.upscale_method, "disabled")}


@node("VAEDecode", inputs={"samples": ports.LATENT, "vae": ports.VAE}, outputs={"image": ports.IMAGE},
      category="latent")
def vae_decode(p, ctx, *, samples, vae):
    """Latents to pixels."""
    from flowrun.diffusion.vae import decode

    return decode(vae, samples["samples"])


@node("VAEEncode", inputs={"pixels": ports.IMAGE, "vae": ports.VAE}, outputs={"latent": ports.LATENT},
      category="latent")
def vae_encode(p, ctx, *, pixels, vae):
    """Pixels to latents (the posterior mean, so the same image always gives the same latent)."""
    from flowrun.diffusion.vae import encode
    from flowrun.errors import NodeError

    try:
        return {"samples": encode(vae, pixels)}
    except ValueError as exc:
        raise NodeError(str(exc)) from None
