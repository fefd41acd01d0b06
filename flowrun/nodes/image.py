"""Image nodes that need no model: solid images, inversion, blending, SaveImage with provenance, and
PreviewImage.

IMAGE values are float32 numpy arrays shaped [batch, height, width, channels] with values in 0..1 (ComfyUI's
layout and range, held in numpy so that image work needs no torch).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.files import INPUT
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION, stays_inside
from flowrun.nodes.registry import NodeParams, NoParams, node


class EmptyImageParams(NodeParams):
    width: int = Field(512, ge=1, le=MAX_RESOLUTION)
    height: int = Field(512, ge=1, le=MAX_RESOLUTION)
    batch_size: int = Field(1, ge=1, le=4096)
    color: int = Field(0, ge=0, le=0xFFFFFF, description="0xRRGGBB")


@node("EmptyImage", outputs={"image": ports.IMAGE}, category="image")
def empty_image(p: EmptyImageParams, ctx) -> ports.Image:
    """A batch of images filled with one colour."""
    import numpy as np

    rgb = [((p.color >> shift) & 0xFF) / 255.0 for shift in (16, 8, 0)]
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32), (p.batch_size, p.height, p.width, 3)).copy()


@node("ImageInvert", outputs={"image": ports.IMAGE}, category="image")
def image_invert(p: NoParams, ctx, *, image: ports.Image) -> ports.Image:
    """1 - image, channel by channel."""
    return (1.0 - image).astype(image.dtype)


BlendMode = Literal["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


class ImageBlendParams(NodeParams):
    blend_factor: float = Field(0.5, ge=0.0, le=1.0)
    blend_mode: BlendMode = "normal"


@node("ImageBlend", outputs={"image": ports.IMAGE}, category="image/postprocessing")
def image_blend(p: ImageBlendParams, ctx, *, image1: ports.Image, image2: ports.Image) -> ports.Image:
    """Blend image2 onto image1 with one of ComfyUI's blend modes, then mix by blend_factor."""
    import numpy as np

    if image1.shape[1:3] != image2.shape[1:3]:
        raise NodeError(f"image sizes differ: image1 is {image1.shape[2]}x{image1.shape[1]}, "
                        f"image2 is {image2.shape[2]}x{image2.shape[1]}; scale one of them first")
    a, b = image1, image2[..., : image1.shape[-1]]
    if p.blend_mode == "normal":
        mixed = b
    elif p.blend_mode == "multiply":
        mixed = a * b
    elif p.blend_mode == "screen":
        mixed = 1 - (1 - a) * (1 - b)
    elif p.blend_mode == "overlay":
        mixed = np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    elif p.blend_mode == "soft_light":
        g = np.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, np.sqrt(a))
        mixed = np.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a))
    else:  # difference
        mixed = a - b
    out = a * (1 - p.blend_factor) + mixed * p.blend_factor
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class SaveImageParams(NodeParams):
    filename_prefix: str = Field("flowrun", min_length=1, max_length=200,
                                 description="File name without extension, below the run's output folder.")

    _inside = stays_inside("filename_prefix", "the prefix would not stay in the output folder")


def to_png(array, text: dict[str, str]) -> bytes:
    """One HxWxC float image as PNG bytes with text chunks; quantised as ComfyUI does (truncating)."""
    import io

    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    pixels = np.clip(255.0 * array, 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


@node("SaveImage", output=True, category="image")
def save_image(p: SaveImageParams, ctx, *, images: ports.Image) -> None:
    """Write each image as a PNG carrying the resolved workflow and the cell's params."""
    stem = ctx.outputs.stem(p.filename_prefix)
    text = ctx.outputs.provenance_text()
    for i, array in enumerate(images):
        name = f"{stem}.png" if len(images) == 1 else f"{stem}-{i:02d}.png"
        ctx.outputs.save(name, to_png(array, text))


@node("PreviewImage", output=True, preview=True, category="image")
def preview_image(p: NoParams, ctx, *, images: ports.Image) -> None:
    """Show images without keeping them: PNGs under previews/ in the run's output folder, made anew every
    run (never cached, never compared with goldens, not in contact sheets)."""
    stem = ctx.outputs.stem("preview")
    for i, array in enumerate(images):
        ctx.outputs.save(f"{stem}.png" if len(images) == 1 else f"{stem}-{i:02d}.png", to_png(array, {}))


class LoadImageParams(NodeParams):
    image: str = Field(min_length=1, description="Image file, relative to the workflow's folder.")

    _inside = stays_inside("image", "the image path would leave the workflow's folder")


@node("LoadImage", outputs={"image": ports.IMAGE, "mask": ports.MASK}, category="image", files={"image": INPUT})
def load_image(p: LoadImageParams, ctx) -> dict:
    """An RGB image and its mask (1 - alpha; zeros when the image has no alpha), as ComfyUI loads them."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(ctx.files.path(INPUT, p.image)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "I":
                im = im.point(lambda i: i * (1 / 255))
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            if "A" in im.getbands():
                mask = 1.0 - np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
            else:
                mask = np.zeros((64, 64), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise NodeError(f"cannot read image '{p.image}': {exc}") from None
    return {"image": rgb[None], "mask": mask[None]}


ScaleMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


class ImageScaleParams(NodeParams):
    upscale_method: ScaleMethod = "nearest-exact"
    width: int = Field(512, ge=0, le=MAX_RESOLUTION)
    height: int = Field(512, ge=0, le=MAX_RESOLUTION)
    crop: Literal["disabled", "center"] = "disabled"


@node("ImageScale", outputs={"image": ports.IMAGE}, category="image/upscaling")
def image_scale(p: ImageScaleParams, ctx, *, image: ports.Image) -> ports.Image:
    """Resize images to width x height (0 keeps the aspect from the other side)."""
    import numpy as np
    import torch

    from flowrun.diffusion.resize import upscale

    if p.width == 0 and p.height == 0:
        return image
    h, w = image.shape[1], image.shape[2]
    width = p.width or max(1, round(w * p.height / h))
    height = p.height or max(1, round(h * p.width / w))
    samples = torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, 1)
    out = upscale(samples, width, height, p.upscale_method, p.crop)
    return out.movedim(1, -1).numpy().astype(np.float32)
