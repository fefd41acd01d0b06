"""Latent nodes: EmptyLatentImage, LatentUpscale, LatentUpscaleBy, VAEEncode, VAEDecode, SetLatentNoiseMask,
and the tiled VAEEncodeTiled and VAEDecodeTiled.
LATENT values are flowrun.values.Latent: `samples` [batch, 4, height/8, width/8] holding unscaled latents,
with an optional `noise_mask` and `batch_index` carried along."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Latent

LatentUpscaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
Crop = Literal["disabled", "center"]


class EmptyLatentParams(NodeParams):
    width: int = Field(512, ge=16, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(512, ge=16, le=MAX_RESOLUTION, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=4096)


@node("EmptyLatentImage", outputs={"latent": ports.LATENT}, category="latent")
def empty_latent_image(p: EmptyLatentParams, ctx) -> Latent:
    """A batch of zero latents for an image of width x height."""
    import torch

    return Latent(torch.zeros([p.batch_size, 4, p.height // 8, p.width // 8]))


class LatentUpscaleParams(NodeParams):
    upscale_method: LatentUpscaleMethod = "nearest-exact"
    width: int = Field(512, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(512, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    crop: Crop = "disabled"


@node("LatentUpscale", outputs={"latent": ports.LATENT}, category="latent")
def latent_upscale(p: LatentUpscaleParams, ctx, *, samples: Latent) -> Latent:
    """Resize latents to width x height pixels (0 keeps the aspect from the other side)."""
    from flowrun.diffusion.resize import upscale

    s = samples.samples
    width, height = p.width, p.height
    if width == 0 and height == 0:
        return samples
    if width == 0:
        width = max(64, round(s.shape[3] * height / s.shape[2]))
    elif height == 0:
        height = max(64, round(s.shape[2] * width / s.shape[3]))
    return samples.replace(samples=upscale(s, width // 8, height // 8, p.upscale_method, p.crop))


class LatentUpscaleByParams(NodeParams):
    upscale_method: LatentUpscaleMethod = "nearest-exact"
    scale_by: float = Field(1.5, ge=0.01, le=8.0)


@node("LatentUpscaleBy", outputs={"latent": ports.LATENT}, category="latent")
def latent_upscale_by(p: LatentUpscaleByParams, ctx, *, samples: Latent) -> Latent:
    """Resize latents by a factor (hires fix)."""
    from flowrun.diffusion.resize import upscale

    s = samples.samples
    width, height = round(s.shape[3] * p.scale_by), round(s.shape[2] * p.scale_by)
    return samples.replace(samples=upscale(s, width, height, p.upscale_method, "disabled"))


@node("VAEDecode", outputs={"image": ports.IMAGE}, category="latent")
def vae_decode(p: NoParams, ctx, *, samples: Latent, vae: ports.Vae) -> ports.Image:
    """Latents to pixels."""
    from flowrun.diffusion.vae import decode

    made = vae.latent_channels
    if samples.samples.shape[1] != made:
        raise NodeError(f"input 'vae': this VAE decodes latents of {made} channels, 'samples' has "
                        f"{samples.samples.shape[1]}: the VAE belongs to another model family")
    return decode(vae, samples.samples)


@node("VAEEncode", outputs={"latent": ports.LATENT}, category="latent")
def vae_encode(p: NoParams, ctx, *, pixels: ports.Image, vae: ports.Vae) -> Latent:
    """Pixels to latents (the posterior mean, so the same image always gives the same latent)."""
    from flowrun.diffusion.vae import encode

    try:
        return Latent(encode(vae, pixels))
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class TiledDecodeParams(NodeParams):
    tile_size: int = Field(512, ge=64, le=4096, multiple_of=32, description="Tile edge in pixels.")
    overlap: int = Field(64, ge=0, le=4096, multiple_of=32, description="Overlap of tiles in pixels.")
    temporal_size: int = Field(64, ge=8, le=4096, multiple_of=4, description="Video models only; unused here.")
    temporal_overlap: int = Field(8, ge=4, le=4096, multiple_of=4, description="Video models only; unused here.")


@node("VAEDecodeTiled", outputs={"image": ports.IMAGE}, category="_for_testing")
def vae_decode_tiled(p: TiledDecodeParams, ctx, *, samples: Latent, vae: ports.Vae) -> ports.Image:
    """Latents to pixels in overlapping tiles, for images too large to decode at once."""
    from flowrun.diffusion.vae import decode_tiled

    overlap = p.tile_size // 4 if p.tile_size < p.overlap * 4 else p.overlap  # as ComfyUI bounds it
    f = vae.downscale
    return decode_tiled(vae, samples.samples, p.tile_size // f, overlap // f)


class TiledEncodeParams(TiledDecodeParams):  # the same fields; ComfyUI steps the encoder's tile by 64
    tile_size: int = Field(512, ge=64, le=4096, multiple_of=64, description="Tile edge in pixels.")


@node("VAEEncodeTiled", outputs={"latent": ports.LATENT}, category="_for_testing")
def vae_encode_tiled(p: TiledEncodeParams, ctx, *, pixels: ports.Image, vae: ports.Vae) -> Latent:
    """Pixels to latents in overlapping tiles, for images too large to encode at once."""
    from flowrun.diffusion.vae import encode_tiled

    try:
        return Latent(encode_tiled(vae, pixels, p.tile_size, p.overlap))
    except ValueError as exc:
        raise NodeError(str(exc)) from None


@node("SetLatentNoiseMask", outputs={"latent": ports.LATENT}, category="latent/inpaint")
def set_latent_noise_mask(p: NoParams, ctx, *, samples: Latent, mask: ports.Mask) -> Latent:
    """Limit sampling to where the mask is 1 (resized to the latent); elsewhere the latent stays as it is."""
    import torch

    m = torch.as_tensor(mask).float()
    return samples.replace(noise_mask=m.reshape((-1, 1) + tuple(m.shape[-2:])))
