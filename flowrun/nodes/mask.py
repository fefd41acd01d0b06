"""Mask nodes, as ComfyUI's: from and to images, solid, inverted, cropped, grown, feathered, composited.

MASK values are float32 numpy arrays [batch, height, width] in 0..1 (a 2-D mask is read as a batch of one).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.files import INPUT
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION, check_batch, stays_inside
from flowrun.nodes.registry import NodeParams, NoParams, node

CHANNELS = ("red", "green", "blue", "alpha")


def _batched(mask):
    """A mask as float32 [batch, height, width]."""
    import numpy as np

    mask = np.asarray(mask, dtype=np.float32)
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


class ImageToMaskParams(NodeParams):
    channel: Literal["red", "green", "blue", "alpha"] = "red"


@node("ImageToMask", outputs={"mask": ports.MASK}, category="mask")
def image_to_mask(p: ImageToMaskParams, ctx, *, image: ports.Image) -> ports.Mask:
    """One channel of each image as a mask."""
    index = CHANNELS.index(p.channel)
    if index >= image.shape[-1]:
        raise NodeError(f"field 'channel': the image has {image.shape[-1]} channels, no {p.channel} "
                        f"(choose one of {', '.join(CHANNELS[:image.shape[-1]])})")
    return image[..., index].astype("float32")


@node("MaskToImage", outputs={"image": ports.IMAGE}, category="mask")
def mask_to_image(p: NoParams, ctx, *, mask: ports.Mask) -> ports.Image:
    """A grey RGB image of each mask."""
    import numpy as np

    return np.repeat(_batched(mask)[..., None], 3, axis=-1)


class SolidMaskParams(NodeParams):
    value: float = Field(1.0, ge=0.0, le=1.0)
    width: int = Field(512, ge=1, le=MAX_RESOLUTION)
    height: int = Field(512, ge=1, le=MAX_RESOLUTION)


@node("SolidMask", outputs={"mask": ports.MASK}, category="mask")
def solid_mask(p: SolidMaskParams, ctx) -> ports.Mask:
    """A width x height mask filled with value."""
    import numpy as np

    return np.full((1, p.height, p.width), p.value, dtype=np.float32)


@node("InvertMask", outputs={"mask": ports.MASK}, category="mask")
def invert_mask(p: NoParams, ctx, *, mask: ports.Mask) -> ports.Mask:
    """1 - mask."""
    return 1.0 - _batched(mask)


class CropMaskParams(NodeParams):
    x: int = Field(0, ge=0, le=MAX_RESOLUTION)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION)
    width: int = Field(512, ge=1, le=MAX_RESOLUTION)
    height: int = Field(512, ge=1, le=MAX_RESOLUTION)


@node("CropMask", outputs={"mask": ports.MASK}, category="mask")
def crop_mask(p: CropMaskParams, ctx, *, mask: ports.Mask) -> ports.Mask:
    """The width x height window at (x, y), cut where it passes the mask's edge."""
    mask = _batched(mask)
    if p.x >= mask.shape[2] or p.y >= mask.shape[1]:
        raise NodeError(f"fields 'x', 'y': ({p.x}, {p.y}) lies outside the {mask.shape[2]}x{mask.shape[1]} mask")
    return mask[:, p.y:p.y + p.height, p.x:p.x + p.width].copy()


class GrowMaskParams(NodeParams):
    expand: int = Field(0, ge=-MAX_RESOLUTION, le=MAX_RESOLUTION)
    tapered_corners: bool = True


@node("GrowMask", outputs={"mask": ports.MASK}, category="mask")
def grow_mask(p: GrowMaskParams, ctx, *, mask: ports.Mask) -> ports.Mask:
    """Grow (expand > 0) or shrink (< 0) by one pixel per step: the max (min) over each pixel's 3x3
    neighbourhood, its corners left out when tapered_corners; the edge pixels repeat outwards."""
    import numpy as np

    out = _batched(mask)
    corner = not p.tapered_corners
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if corner or dy == 0 or dx == 0]
    reduce = np.maximum if p.expand > 0 else np.minimum
    h, w = out.shape[1:]
    for _ in range(min(abs(p.expand), h + w)):  # after h + w steps nothing changes any more
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1)), mode="edge")
        grown = out
        for dy, dx in offsets:
            grown = reduce(grown, padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        out = grown
    return out.copy()


class FeatherMaskParams(NodeParams):
    left: int = Field(0, ge=0, le=MAX_RESOLUTION)
    top: int = Field(0, ge=0, le=MAX_RESOLUTION)
    right: int = Field(0, ge=0, le=MAX_RESOLUTION)
    bottom: int = Field(0, ge=0, le=MAX_RESOLUTION)


@node("FeatherMask", outputs={"mask": ports.MASK}, category="mask")
def feather_mask(p: FeatherMaskParams, ctx, *, mask: ports.Mask) -> ports.Mask:
    """Fade each edge linearly over that many pixels: column i of `left` is scaled by (i + 1) / left.

    The right and bottom ramps are ComfyUI's to the pixel: step i scales column -i, so the first step
    falls on column 0 and the outermost column gets 2 / right (kept, so imported graphs match)."""
    out = _batched(mask).copy()
    h, w = out.shape[1:]
    left, right, top, bottom = min(p.left, w), min(p.right, w), min(p.top, h), min(p.bottom, h)
    for i in range(left):
        out[:, :, i] *= (i + 1) / left
    for i in range(right):
        out[:, :, -i] *= (i + 1) / right
    for i in range(top):
        out[:, i, :] *= (i + 1) / top
    for i in range(bottom):
        out[:, -i, :] *= (i + 1) / bottom
    return out


class MaskCompositeParams(NodeParams):
    x: int = Field(0, ge=0, le=MAX_RESOLUTION)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION)
    operation: Literal["multiply", "add", "subtract", "and", "or", "xor"] = "multiply"


@node("MaskComposite", outputs={"mask": ports.MASK}, category="mask")
def mask_composite(p: MaskCompositeParams, ctx, *, destination: ports.Mask, source: ports.Mask) -> ports.Mask:
    """Combine source into destination at (x, y) with operation (and/or/xor on values rounded to 0 or 1),
    clamped to 0..1; the part of source past destination's edge is cut off."""
    import numpy as np

    out, source = _batched(destination).copy(), _batched(source)
    check_batch(source.shape[0], out.shape[0], "source", "destination")
    bottom, right = min(p.y + source.shape[1], out.shape[1]), min(p.x + source.shape[2], out.shape[2])
    if bottom > p.y and right > p.x:
        a = out[:, p.y:bottom, p.x:right]
        b = source[:, : bottom - p.y, : right - p.x]
        if p.operation in ("and", "or", "xor"):
            logic = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}[p.operation]
            mixed = logic(np.round(a) != 0, np.round(b) != 0).astype(np.float32)
        else:
            mixed = {"multiply": a * b, "add": a + b, "subtract": a - b}[p.operation]
        out[:, p.y:bottom, p.x:right] = mixed
    return np.clip(out, 0.0, 1.0)


class LoadImageMaskParams(NodeParams):
    image: str = Field(min_length=1, description="Image file, relative to the workflow's folder.")
    channel: Literal["alpha", "red", "green", "blue"] = "alpha"

    _inside = stays_inside("image", "the image path would leave the workflow's folder")


@node("LoadImageMask", outputs={"mask": ports.MASK}, category="mask", files={"image": INPUT})
def load_image_mask(p: LoadImageMaskParams, ctx) -> ports.Mask:
    """One channel of an image file as a mask; alpha is inverted (1 - alpha: transparent is masked), and an
    image without alpha counts as opaque."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(ctx.files.path(INPUT, p.image)) as im:
            im = ImageOps.exif_transpose(im)
            if im.getbands() != ("R", "G", "B", "A"):
                if im.mode == "I":
                    im = im.point(lambda i: i * (1 / 255))
                im = im.convert("RGBA")
            band = np.asarray(im.getchannel(p.channel[0].upper()), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise NodeError(f"cannot read image '{p.image}': {exc}") from None
    return (1.0 - band if p.channel == "alpha" else band)[None]
