"""A sampler's latent seen as a picture, cheaply: one linear map from the latent's channels to RGB per
latent format, as ComfyUI's "latent2rgb" previews, for watching an image form while it samples.

The factors are ComfyUI's published projections (comfy/latent_formats.py: `latent_rgb_factors` and
`latent_rgb_factors_bias`), fitted per VAE on the latent as the diffusion model sees it (scaled, shifted):
rgb = latent · factors + bias, in -1..1, shown as (rgb + 1) / 2. Nothing decodes: a 64x64 latent costs
one small matrix product, so the preview is one eighth of the image's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatentFormat:
    """One VAE's latent: its channel count and the rows (one per channel) of its RGB projection."""

    name: str
    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def channels(self) -> int:
        return len(self.factors)


SD15 = LatentFormat("sd15", (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
))
SDXL = LatentFormat("sdxl", (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
), (0.1084, -0.0175, -0.0011))
SD3 = LatentFormat("sd3", (
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
FLUX = LatentFormat("flux", (
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

FORMATS = {f.name: f for f in (SD15, SDXL, SD3, FLUX)}
# flowrun's model families (flowrun.diffusion.configs) by the latent format their VAE makes: SD2 shares
# SD1's VAE, the SDXL refiner SDXL's
FAMILY_FORMATS = {"sd1": SD15, "sd2": SD15, "sdxl": SDXL, "sdxl_refiner": SDXL, "sd3": SD3, "flux": FLUX}


def format_for(family: str, channels: int) -> LatentFormat | None:
    """The latent format of a model family, or None when flowrun has no projection for it (or the latent's
    channels are not the format's: a preview of the wrong format would mislead)."""
    fmt = FAMILY_FORMATS.get(family)
    return fmt if fmt is not None and fmt.channels == channels else None


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
