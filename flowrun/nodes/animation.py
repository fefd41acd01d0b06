"""Animated output, as ComfyUI's SaveAnimatedWEBP and SaveAnimatedPNG: a batch of images becomes one
animation, the batch's images its frames in order, each shown 1000 / fps milliseconds (whole ms, as
ComfyUI truncates). Encoded by Pillow, so the same frames and fields give the same bytes.

Like ComfyUI (whose savers are Pillow's too), a frame identical to the one before it is not written
again: Pillow's APNG writer lengthens the previous frame's duration instead.

Provenance: the animated PNG carries the same text chunks as SaveImage's PNGs; the WEBP carries them in
EXIF tags as ComfyUI puts its own there (0x0110 Model: "prompt:<ComfyUI prompt>", then 0x010F Make,
0x010E ImageDescription: "flowrun:<json>", "flowrun_workflow:<yaml>").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.image import SaveImageParams
from flowrun.nodes.registry import node

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}  # ComfyUI's names for libwebp's effort 0..6
FPS = Field(6.0, ge=0.01, le=1000.0, description="Frames per second; each frame lasts int(1000 / fps) ms.")


def frames(images) -> list:
    """The batch as Pillow images, quantised as SaveImage does (truncating)."""
    import numpy as np
    from PIL import Image

    pixels = np.clip(255.0 * np.asarray(images), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return [Image.fromarray(frame) for frame in pixels]


def duration_ms(fps: float) -> int:
    """How long each frame shows: int(1000 / fps), ComfyUI's rounding."""
    return int(1000.0 / fps)


class SaveAnimatedWEBPParams(SaveImageParams):
    fps: float = FPS
    lossless: bool = True
    quality: int = Field(80, ge=0, le=100, description="Lossy: image quality; lossless: compression effort.")
    method: Literal["default", "fastest", "slowest"] = "default"


def to_webp(images, p: SaveAnimatedWEBPParams, text: dict[str, str]) -> bytes:
    """The batch as one animated WEBP with provenance in its EXIF."""
    import io

    pictures = frames(images)
    exif = pictures[0].getexif()
    for tag, key in ((0x0110, "prompt"), (0x010F, "flowrun"), (0x010E, "flowrun_workflow")):
        if text.get(key):
            exif[tag] = f"{key}:{text[key]}"
    buf = io.BytesIO()
    pictures[0].save(buf, format="WEBP", save_all=True, append_images=pictures[1:], duration=duration_ms(p.fps),
                     exif=exif, lossless=p.lossless, quality=p.quality, method=WEBP_METHODS[p.method])
    return buf.getvalue()


@node("SaveAnimatedWEBP", output=True, category="image/animation")
def save_animated_webp(p: SaveAnimatedWEBPParams, ctx, *, images: ports.Image) -> None:
    """Write the batch as one animated WEBP, frames in batch order at fps, lossless or at a quality."""
    ctx.outputs.save(f"{ctx.outputs.stem(p.filename_prefix)}.webp", to_webp(images, p, ctx.outputs.provenance_text()))


class SaveAnimatedPNGParams(SaveImageParams):
    fps: float = FPS
    compress_level: int = Field(4, ge=0, le=9, description="zlib level: 0 none, 9 smallest.")


def to_apng(images, p: SaveAnimatedPNGParams, text: dict[str, str]) -> bytes:
    """The batch as one animated PNG with SaveImage's text chunks."""
    import io

    from PIL.PngImagePlugin import PngInfo

    pictures = frames(images)
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    pictures[0].save(buf, format="PNG", save_all=True, append_images=pictures[1:], duration=duration_ms(p.fps),
                     pnginfo=info, compress_level=p.compress_level)
    return buf.getvalue()


@node("SaveAnimatedPNG", output=True, category="image/animation")
def save_animated_png(p: SaveAnimatedPNGParams, ctx, *, images: ports.Image) -> None:
    """Write the batch as one animated PNG (APNG), frames in batch order at fps."""
    ctx.outputs.save(f"{ctx.outputs.stem(p.filename_prefix)}.png", to_apng(images, p, ctx.outputs.provenance_text()))
