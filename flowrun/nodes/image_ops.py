"""Image nodes that edit pixels, as ComfyUI's: sharpen, blur, quantize, scale, crop, batch, composite, pad.

IMAGE values are float32 numpy [batch, height, width, channels] in 0..1; the filters run in torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION, check_batch
from flowrun.nodes.image import ScaleMethod
from flowrun.nodes.registry import NodeParams, NoParams, node


def _nchw(image):
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).movedim(-1, 1)


def _nhwc(samples):
    import numpy as np

    return np.ascontiguousarray(samples.movedim(1, -1).numpy(), dtype=np.float32)


def _gaussian(size: int, sigma: float):
    """ComfyUI's kernel: a size x size Gaussian over [-1, 1]^2 (sigma in those units), summing to 1."""
    import torch

    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter(image, kernel, radius: int, field: str):
    """Each channel convolved with `kernel`, the image mirrored (without repeating the edge) at its borders."""
    import torch

    if radius >= min(image.shape[1], image.shape[2]):
        raise NodeError(f"field '{field}': {radius} must be smaller than the image's "
                        f"{image.shape[2]}x{image.shape[1]} pixels")
    channels = image.shape[-1]
    padded = torch.nn.functional.pad(_nchw(image), (radius,) * 4, mode="reflect")
    weights = kernel.expand(channels, 1, *kernel.shape)
    return torch.nn.functional.conv2d(padded, weights, groups=channels)


class ImageSharpenParams(NodeParams):
    sharpen_radius: int = Field(1, ge=1, le=31)
    sigma: float = Field(1.0, ge=0.1, le=10.0)
    alpha: float = Field(1.0, ge=0.0, le=5.0)


@node("ImageSharpen", outputs={"image": ports.IMAGE}, category="image/postprocessing")
def image_sharpen(p: ImageSharpenParams, ctx, *, image: ports.Image) -> ports.Image:
    """Unsharp masking: the Gaussian times -10 alpha with the centre raised so the kernel sums to 1."""
    import torch

    kernel = _gaussian(2 * p.sharpen_radius + 1, p.sigma) * -(p.alpha * 10)
    r = p.sharpen_radius
    kernel[r, r] = kernel[r, r] - kernel.sum() + 1.0
    return _nhwc(torch.clamp(_filter(image, kernel, r, "sharpen_radius"), 0, 1))


class ImageBlurParams(NodeParams):
    blur_radius: int = Field(1, ge=1, le=31)
    sigma: float = Field(1.0, ge=0.1, le=10.0)


@node("ImageBlur", outputs={"image": ports.IMAGE}, category="image/postprocessing")
def image_blur(p: ImageBlurParams, ctx, *, image: ports.Image) -> ports.Image:
    """Gaussian blur over a (2 blur_radius + 1) square."""
    return _nhwc(_filter(image, _gaussian(2 * p.blur_radius + 1, p.sigma), p.blur_radius, "blur_radius"))


Dither = Literal["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


class ImageQuantizeParams(NodeParams):
    colors: int = Field(256, ge=1, le=256)
    dither: Dither = "none"


def _bayer(n: int):
    """The normalised 2^n x 2^n Bayer threshold matrix, centred on 0."""
    import numpy as np

    if n == 0:
        return np.zeros((1, 1))
    q = 4 ** n
    m = q * _bayer(n - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


@node("ImageQuantize", outputs={"image": ports.IMAGE}, category="image/postprocessing")
def image_quantize(p: ImageQuantizeParams, ctx, *, image: ports.Image) -> ports.Image:
    """Reduce each image to a palette of `colors` (Pillow's median cut), with optional dithering."""
    import math

    import numpy as np
    from PIL import Image

    if image.shape[-1] != 3:
        raise NodeError(f"'image' has {image.shape[-1]} channels; ImageQuantize takes RGB images")
    out = np.empty_like(image, dtype=np.float32)
    for b, array in enumerate(image):
        pixels = np.clip(array * 255, 0, 255).astype(np.uint8)  # truncating, as ComfyUI
        im = Image.fromarray(pixels, "RGB")
        palette = im.quantize(colors=p.colors)
        if p.dither.startswith("bayer"):
            order = int(p.dither.split("-")[1])
            spread = 2 * 256 / (len(palette.getpalette()) // 3)
            matrix = spread * _bayer(int(math.log2(order))) + 0.5
            h, w = pixels.shape[:2]
            tiled = np.tile(matrix, (math.ceil(h / order), math.ceil(w / order)))[:h, :w, None]
            shifted = np.clip(pixels.astype(np.float32) + tiled, 0, 255).astype(np.uint8)
            quantized = Image.fromarray(shifted, "RGB").quantize(palette=palette, dither=Image.Dither.NONE)
        else:
            dither = Image.Dither.NONE if p.dither == "none" else Image.Dither.FLOYDSTEINBERG
            quantized = im.quantize(colors=p.colors, palette=palette, dither=dither)
        out[b] = np.asarray(quantized.convert("RGB"), dtype=np.float32) / 255
    return out


class ImageScaleByParams(NodeParams):
    upscale_method: ScaleMethod = "nearest-exact"
    scale_by: float = Field(1.0, ge=0.01, le=8.0)


def _resized(image, width: int, height: int, method: str):
    from flowrun.diffusion.resize import upscale

    return _nhwc(upscale(_nchw(image), width, height, method, "disabled"))


@node("ImageScaleBy", outputs={"image": ports.IMAGE}, category="image/upscaling")
def image_scale_by(p: ImageScaleByParams, ctx, *, image: ports.Image) -> ports.Image:
    """Resize by a factor, each side rounded to whole pixels."""
    width, height = round(image.shape[2] * p.scale_by), round(image.shape[1] * p.scale_by)
    if width < 1 or height < 1:
        raise NodeError(f"field 'scale_by': {p.scale_by} makes the {image.shape[2]}x{image.shape[1]} image "
                        f"{width}x{height}")
    return _resized(image, width, height, p.upscale_method)


class ImageScaleToTotalPixelsParams(NodeParams):
    upscale_method: ScaleMethod = "nearest-exact"
    megapixels: float = Field(1.0, ge=0.01, le=16.0)
    resolution_steps: int = Field(1, ge=1, le=256)


@node("ImageScaleToTotalPixels", outputs={"image": ports.IMAGE}, category="image/upscaling")
def image_scale_to_total_pixels(p: ImageScaleToTotalPixelsParams, ctx, *, image: ports.Image) -> ports.Image:
    """Resize, keeping the aspect, to about megapixels x 1024 x 1024 pixels; each side a multiple of
    resolution_steps."""
    import math

    h, w = image.shape[1], image.shape[2]
    scale = math.sqrt(p.megapixels * 1024 * 1024 / (w * h))
    width = round(w * scale / p.resolution_steps) * p.resolution_steps
    height = round(h * scale / p.resolution_steps) * p.resolution_steps
    if width < 1 or height < 1:
        raise NodeError(f"field 'resolution_steps': {p.resolution_steps} rounds the image to {width}x{height}")
    return _resized(image, int(width), int(height), p.upscale_method)


class ImageCropParams(NodeParams):
    width: int = Field(512, ge=1, le=MAX_RESOLUTION)
    height: int = Field(512, ge=1, le=MAX_RESOLUTION)
    x: int = Field(0, ge=0, le=MAX_RESOLUTION)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION)


@node("ImageCrop", outputs={"image": ports.IMAGE}, category="image/transform")
def image_crop(p: ImageCropParams, ctx, *, image: ports.Image) -> ports.Image:
    """The width x height window at (x, y) (x, y kept inside the image; the window cut at its edge)."""
    x, y = min(p.x, image.shape[2] - 1), min(p.y, image.shape[1] - 1)
    return image[:, y:y + p.height, x:x + p.width].copy()


def _alpha_fix(image, channels: int, field: str):
    """`image` with `channels` channels: RGB gains an opaque alpha, RGBA loses it; others are an error."""
    import numpy as np

    have = image.shape[-1]
    if have == channels:
        return image
    if {have, channels} != {3, 4}:
        raise NodeError(f"'{field}' has {have} channels where {channels} are needed")
    if have == 4:
        return image[..., :3]
    return np.concatenate([image, np.ones_like(image[..., :1])], axis=-1)


@node("ImageBatch", outputs={"image": ports.IMAGE}, category="image")
def image_batch(p: NoParams, ctx, *, image1: ports.Image, image2: ports.Image) -> ports.Image:
    """image2's images after image1's, resized (bilinear, centre crop) to image1's size; if one has alpha
    the other gains an opaque one."""
    import numpy as np

    from flowrun.diffusion.resize import upscale

    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = _alpha_fix(image1, channels, "image1"), _alpha_fix(image2, channels, "image2")
    if image1.shape[1:] != image2.shape[1:]:
        image2 = _nhwc(upscale(_nchw(image2), image1.shape[2], image1.shape[1], "bilinear", "center"))
    return np.concatenate([image1, image2]).astype(np.float32)


class ImageCompositeMaskedParams(NodeParams):
    x: int = Field(0, ge=0, le=MAX_RESOLUTION)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION)
    resize_source: bool = False


@node("ImageCompositeMasked", outputs={"image": ports.IMAGE}, category="image")
def image_composite_masked(p: ImageCompositeMaskedParams, ctx, *, destination: ports.Image, source: ports.Image,
                           mask: ports.Mask | None = None) -> ports.Image:
    """Paste source onto destination at (x, y) through `mask` (stretched to the source's size)."""
    from flowrun.diffusion.composite import composite

    source = _alpha_fix(source, destination.shape[-1], "source")
    check_batch(source.shape[0], destination.shape[0], "source", "destination")
    if mask is not None:
        check_batch(mask.reshape(-1, *mask.shape[-2:]).shape[0], destination.shape[0], "mask", "destination")
    return _nhwc(composite(_nchw(destination), _nchw(source), p.x, p.y, mask, 1, p.resize_source))


class ImagePadForOutpaintParams(NodeParams):
    left: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    top: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    right: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    bottom: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    feathering: int = Field(40, ge=0, le=MAX_RESOLUTION)


@node("ImagePadForOutpaint", outputs={"image": ports.IMAGE, "mask": ports.MASK}, category="image")
def image_pad_for_outpaint(p: ImagePadForOutpaintParams, ctx, *, image: ports.Image) -> dict:
    """Grey (0.5) borders around the image, and the mask to repaint: 1 on the borders, inside the image
    ((feathering - d) / feathering)^2 within `feathering` pixels of a padded side (d: distance to it)."""
    import numpy as np

    b, h, w, c = image.shape
    out = np.full((b, h + p.top + p.bottom, w + p.left + p.right, c), 0.5, dtype=np.float32)
    out[:, p.top:p.top + h, p.left:p.left + w] = image
    mask = np.ones(out.shape[1:3], dtype=np.float32)
    inner = np.zeros((h, w), dtype=np.float32)
    if 0 < p.feathering and 2 * p.feathering < min(h, w):
        i, j = np.mgrid[0:h, 0:w]
        d = np.minimum.reduce([i if p.top else np.full_like(i, h), h - i if p.bottom else np.full_like(i, h),
                               j if p.left else np.full_like(j, w), w - j if p.right else np.full_like(j, w)])
        ramp = (p.feathering - d) / p.feathering
        inner = np.where(d < p.feathering, ramp * ramp, 0.0).astype(np.float32)
    mask[p.top:p.top + h, p.left:p.left + w] = inner
    return {"image": out, "mask": mask[None]}
