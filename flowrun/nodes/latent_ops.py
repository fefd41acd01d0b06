"""Latent arithmetic and layout, as ComfyUI's: composites, blends, batches, crops, flips and rotations.

Each node keeps the first latent's `noise_mask` and `batch_index` unless it says otherwise. Where ComfyUI
rescales a second latent to the first one's size (blend, add, batch...), so does flowrun; latents whose
channel counts differ, or batches that cannot be matched (neither 1 nor equal), are errors naming the input.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION, check_batch
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Latent


def _channels_match(first: str, a, second: str, b) -> None:
    if a.shape[1] != b.shape[1]:
        raise NodeError(f"'{second}' has {b.shape[1]} latent channels but '{first}' has {a.shape[1]}: "
                        "they come from different model families")


def _batch_to(tensor, n: int, field: str, other: str):
    """`tensor` with `n` rows: as it is, or one row repeated; other counts are an error naming `field`."""
    check_batch(tensor.shape[0], n, field, other)
    return tensor.expand(n, *tensor.shape[1:])


def _shaped_like(target, latent, field: str, other: str, repeat_batch: bool = True):
    """`latent` resized (bilinear, centre crop) to `target`'s size, as ComfyUI's reshape_latent_to."""
    from flowrun.diffusion.resize import upscale

    _channels_match(other, target, field, latent)
    if latent.shape[1:] != target.shape[1:]:
        latent = upscale(latent, target.shape[-1], target.shape[-2], "bilinear", "center")
    return _batch_to(latent, target.shape[0], field, other) if repeat_batch else latent


class LatentCompositeParams(NodeParams):
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    feather: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)


@node("LatentComposite", outputs={"latent": ports.LATENT}, category="latent")
def latent_composite(p: LatentCompositeParams, ctx, *, samples_to: Latent, samples_from: Latent) -> Latent:
    """Paste samples_from onto samples_to at (x, y) pixels; `feather` pixels of linear ramp on the edges
    that lie inside samples_to."""
    import torch

    to, src = samples_to.samples, samples_from.samples
    _channels_match("samples_to", to, "samples_from", src)
    x, y, feather = p.x // 8, p.y // 8, p.feather // 8
    src = _batch_to(src[:, :, : max(0, to.shape[2] - y), : max(0, to.shape[3] - x)], to.shape[0],
                    "samples_from", "samples_to")
    out = to.clone()
    h, w = src.shape[2], src.shape[3]
    if h == 0 or w == 0:
        return samples_to.replace(samples=out)
    mask = torch.ones_like(src)
    for t in range(feather):  # ramps only on the edges that fall inside samples_to
        rate = (t + 1) / feather
        if t < h and y != 0:
            mask[:, :, t] *= rate
        if t < h and y + h < to.shape[2]:
            mask[:, :, h - 1 - t] *= rate
        if t < w and x != 0:
            mask[:, :, :, t] *= rate
        if t < w and x + w < to.shape[3]:
            mask[:, :, :, w - 1 - t] *= rate
    region = out[:, :, y:y + h, x:x + w]
    out[:, :, y:y + h, x:x + w] = src * mask + region * (1 - mask)
    return samples_to.replace(samples=out)


class LatentCompositeMaskedParams(NodeParams):
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    resize_source: bool = False


@node("LatentCompositeMasked", outputs={"latent": ports.LATENT}, category="latent")
def latent_composite_masked(p: LatentCompositeMaskedParams, ctx, *, destination: Latent, source: Latent,
                            mask: ports.Mask | None = None) -> Latent:
    """Paste source onto destination at (x, y) pixels through `mask` (stretched to the source's size)."""
    from flowrun.diffusion.composite import composite

    _channels_match("destination", destination.samples, "source", source.samples)
    check_batch(source.samples.shape[0], destination.samples.shape[0], "source", "destination")
    if mask is not None:
        check_batch(mask.reshape(-1, *mask.shape[-2:]).shape[0], destination.samples.shape[0], "mask", "destination")
    out = composite(destination.samples, source.samples, p.x, p.y, mask, 8, p.resize_source)
    return destination.replace(samples=out)


class LatentBlendParams(NodeParams):
    blend_factor: float = Field(0.5, ge=0.0, le=1.0)


@node("LatentBlend", outputs={"latent": ports.LATENT}, category="_for_testing")
def latent_blend(p: LatentBlendParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """samples1 * blend_factor + samples2 * (1 - blend_factor); samples2 resized (bicubic) to fit."""
    from flowrun.diffusion.resize import upscale

    s1, s2 = samples1.samples, samples2.samples
    _channels_match("samples1", s1, "samples2", s2)
    if s1.shape != s2.shape:
        s2 = upscale(s2, s1.shape[3], s1.shape[2], "bicubic", "center")
    s2 = _batch_to(s2, s1.shape[0], "samples2", "samples1")
    return samples1.replace(samples=s1 * p.blend_factor + s2 * (1 - p.blend_factor))


@node("LatentAdd", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_add(p: NoParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """samples1 + samples2 (samples2 resized to fit)."""
    s1 = samples1.samples
    return samples1.replace(samples=s1 + _shaped_like(s1, samples2.samples, "samples2", "samples1"))


@node("LatentSubtract", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_subtract(p: NoParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """samples1 - samples2 (samples2 resized to fit)."""
    s1 = samples1.samples
    return samples1.replace(samples=s1 - _shaped_like(s1, samples2.samples, "samples2", "samples1"))


class LatentMultiplyParams(NodeParams):
    multiplier: float = Field(1.0, ge=-10.0, le=10.0)


@node("LatentMultiply", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_multiply(p: LatentMultiplyParams, ctx, *, samples: Latent) -> Latent:
    """samples * multiplier."""
    return samples.replace(samples=samples.samples * p.multiplier)


class LatentInterpolateParams(NodeParams):
    ratio: float = Field(1.0, ge=0.0, le=1.0)


@node("LatentInterpolate", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_interpolate(p: LatentInterpolateParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """Per pixel, the direction of the channel vectors lerped by ratio (1: samples1) and renormalised,
    with their lengths lerped the same way."""
    import torch

    s1 = samples1.samples
    s2 = _shaped_like(s1, samples2.samples, "samples2", "samples1")
    m1, m2 = s1.norm(dim=1, keepdim=True), s2.norm(dim=1, keepdim=True)
    t = torch.nan_to_num(s1 / m1) * p.ratio + torch.nan_to_num(s2 / m2) * (1.0 - p.ratio)
    direction = torch.nan_to_num(t / t.norm(dim=1, keepdim=True))
    return samples1.replace(samples=direction * (m1 * p.ratio + m2 * (1.0 - p.ratio)))


@node("LatentBatch", outputs={"latent": ports.LATENT}, category="latent/batch")
def latent_batch(p: NoParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """samples2's rows after samples1's (resized to fit); batch_index joined, each defaulting to 0..n-1."""
    import torch

    s1 = samples1.samples
    s2 = _shaped_like(s1, samples2.samples, "samples2", "samples1", repeat_batch=False)
    index = (samples1.batch_index or tuple(range(s1.shape[0]))) + (samples2.batch_index or tuple(range(s2.shape[0])))
    return samples1.replace(samples=torch.cat((s1, s2)), batch_index=index)


class LatentFromBatchParams(NodeParams):
    batch_index: int = Field(0, ge=0, le=63)
    length: int = Field(1, ge=1, le=64)


@node("LatentFromBatch", outputs={"latent": ports.LATENT}, category="latent/batch")
def latent_from_batch(p: LatentFromBatchParams, ctx, *, samples: Latent) -> Latent:
    """Rows batch_index .. batch_index + length - 1 (clamped to the batch), remembering which draws of the
    seed's noise they were."""
    s = samples.samples
    start = min(s.shape[0] - 1, p.batch_index)
    length = min(s.shape[0] - start, p.length)
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:
        if mask.shape[0] < s.shape[0]:
            mask = mask.repeat(-(-s.shape[0] // mask.shape[0]), 1, 1, 1)[: s.shape[0]]
        mask = mask[start:start + length].clone()
    index = samples.batch_index[start:start + length] if samples.batch_index else tuple(range(start, start + length))
    return Latent(s[start:start + length].clone(), mask, tuple(index))


class RepeatLatentBatchParams(NodeParams):
    amount: int = Field(1, ge=1, le=64)


@node("RepeatLatentBatch", outputs={"latent": ports.LATENT}, category="latent/batch")
def repeat_latent_batch(p: RepeatLatentBatchParams, ctx, *, samples: Latent) -> Latent:
    """The batch repeated `amount` times; a batch_index is continued past its range for each copy."""
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:
        mask = mask.repeat(p.amount, 1, 1, 1)
    index = samples.batch_index
    if index:
        offset = max(index) - min(index) + 1
        index = tuple(index) + tuple(i + k * offset for k in range(1, p.amount) for i in index)
    return Latent(samples.samples.repeat(p.amount, 1, 1, 1), mask, index)


class LatentCropParams(NodeParams):
    width: int = Field(512, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(512, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)


@node("LatentCrop", outputs={"latent": ports.LATENT}, category="latent/transform")
def latent_crop(p: LatentCropParams, ctx, *, samples: Latent) -> Latent:
    """A width x height window at (x, y) pixels; x and y are pulled back to leave at least 64 pixels."""
    s = samples.samples
    x, y = min(p.x // 8, s.shape[3] - 8), min(p.y // 8, s.shape[2] - 8)
    x, y = max(x, 0), max(y, 0)
    return samples.replace(samples=s[:, :, y:y + p.height // 8, x:x + p.width // 8])


class LatentFlipParams(NodeParams):
    flip_method: Literal["x-axis: vertically", "y-axis: horizontally"] = "x-axis: vertically"


@node("LatentFlip", outputs={"latent": ports.LATENT}, category="latent/transform")
def latent_flip(p: LatentFlipParams, ctx, *, samples: Latent) -> Latent:
    """Mirror top to bottom ("x-axis: vertically") or left to right ("y-axis: horizontally")."""
    import torch

    dim = 2 if p.flip_method.startswith("x") else 3
    return samples.replace(samples=torch.flip(samples.samples, dims=[dim]))


class LatentRotateParams(NodeParams):
    rotation: Literal["none", "90 degrees", "180 degrees", "270 degrees"] = "none"


@node("LatentRotate", outputs={"latent": ports.LATENT}, category="latent/transform")
def latent_rotate(p: LatentRotateParams, ctx, *, samples: Latent) -> Latent:
    """Rotate clockwise by a quarter turn, a half or three quarters."""
    import torch

    turns = ["none", "90 degrees", "180 degrees", "270 degrees"].index(p.rotation)
    return samples.replace(samples=torch.rot90(samples.samples, k=turns, dims=[3, 2]))


class LatentBatchSeedBehaviorParams(NodeParams):
    seed_behavior: Literal["random", "fixed"] = "fixed"


@node("LatentBatchSeedBehavior", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_batch_seed_behavior(p: LatentBatchSeedBehaviorParams, ctx, *, samples: Latent) -> Latent:
    """"fixed": every row takes the first row's draw of the seed's noise (the same noise for all);
    "random": the batch_index is dropped, so row i takes draw i."""
    if p.seed_behavior == "random":
        return samples.replace(batch_index=None)
    first = samples.batch_index[0] if samples.batch_index else 0
    return samples.replace(batch_index=(first,) * samples.samples.shape[0])
