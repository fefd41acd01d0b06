"""A sampler's latent seen as a picture, cheaply: one linear map from the latent's channels to RGB per
latent format, as ComfyUI's "latent2rgb" previews, for watching an image form while it samples.

The factors are ComfyUI's published projections (comfy/latent_formats.py: `latent_rgb_factors` and
`latent_rgb_factors_bias`), fitted per VAE on the latent as the diffusion model sees it (scaled, shifted):
rgb = latent · factors + bias, in -1..1, shown as (rgb + 1) / 2. Nothing decodes: a 64x64 latent costs
one small matrix product, so the preview is one eighth of the image's size. A projection belongs to one
VAE, known by the model's family and the VAE's scaling factor; a model whose VAE has none gets no preview
rather than a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatentFormat:
    """One VAE's latent: its channel count and the rows (one per channel) of its RGB projection."""

    name: str
    scale: float  # the VAE's scaling factor, which tells this VAE from another of the same family
    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def channels(self) -> int:
        return len(self.factors)


SD15 = LatentFormat("sd15", 0.18215, (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
))
SDXL = LatentFormat("sdxl", 0.13025, (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
), (0.1084, -0.0175, -0.0011))
SD3 = LatentFormat("sd3", 1.5305, (
    (-0.0922, -0.0175, 0.0749),
    (0.0311, 0.0633, 0.0954),
    (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496),
    (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427),
    (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268),
    (0.0922, 0.0988, 0.0951),
    (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895),
    (-0.0069, -0.0030, -0.0810),
    (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
), (0.2394, 0.2135, 0.1925))
FLUX = LatentFormat("flux", 0.3611, (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
), (-0.0329, -0.0718, -0.0851))

# The bundled flowrun-tiny's own VAE (an SD1-shaped model with a VAE trained here), fitted as ComfyUI's
# were: least squares from the final latents of 48 renders (4 colours x 3 shapes x 2 backgrounds x 2
# seeds, 12 euler steps, cfg 7) to their decoded images box-averaged to the latent's size. Its decoder is
# far from linear: the fit's error is 0.42, 0.45 and 0.58 (R, G, B, on -1..1), a rough picture of the
# colours and where they are; SD1's factors on this VAE err by 1.39, 1.35 and 0.84.
FLOWRUN_TINY = LatentFormat("flowrun-tiny", 0.30224, (
    (0.3579, 0.1052, -0.2236),
    (-0.6195, -0.4593, -0.2954),
    (-0.2197, -0.2191, -0.2694),
    (-0.3067, -0.2610, -0.1461),
), (-0.0200, 0.0409, 0.1179))

FORMATS = {f.name: f for f in (SD15, SDXL, SD3, FLUX, FLOWRUN_TINY)}
# flowrun's model families (flowrun.diffusion.configs) by the latent formats their VAEs make: SD2 shares
# SD1's VAE, the SDXL refiner SDXL's
FAMILY_FORMATS = {"sd1": (SD15, FLOWRUN_TINY), "sd2": (SD15,), "sdxl": (SDXL,), "sdxl_refiner": (SDXL,),
                  "sd3": (SD3,), "flux": (FLUX,)}


def format_for(family: str, channels: int, scale: float) -> LatentFormat | None:
    """The latent format of a family's VAE with this scaling factor and channel count, or None when flowrun
    has no projection for it (a preview made for another VAE would mislead)."""
    return next((f for f in FAMILY_FORMATS.get(family, ()) if f.channels == channels and abs(f.scale - scale) < 1e-6),
                None)


def for_model(model) -> LatentFormat | None:
    """The format of a DiffusionModel's latents (None for one that normalises them per channel, as
    Playground v2.5 does, and for VAEs without a projection)."""
    if model.latent_format is not None:
        return None
    return format_for(model.family, model.unet.config.out_channels, model.latent_scale)


def to_rgb(latent, fmt: LatentFormat) -> np.ndarray:
    """The preview of a latent in the model's space ([N, C, H, W] tensor or array): uint8 RGB [N, H, W, 3]."""
    x = latent.detach().float().cpu().numpy() if hasattr(latent, "detach") else np.asarray(latent, np.float32)
    factors = np.asarray(fmt.factors, np.float32)  # [C, 3]
    rgb = np.einsum("nchw,cr->nhwr", x.astype(np.float32), factors) + np.asarray(fmt.bias, np.float32)
    # as ComfyUI's preview: -1..1 to 0..255, truncated to whole levels
    return (np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """One preview [H, W, 3] as PNG bytes (fast settings: previews are thrown away)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
