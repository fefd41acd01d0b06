"""Conditioning nodes: CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPSetLastLayer,
ConditioningCombine, ConditioningConcat, ConditioningAverage, ConditioningZeroOut, and the ones that say
where and when an entry applies (ConditioningSetArea, -AreaPercentage, -AreaStrength, -Mask,
-TimestepRange). CONDITIONING values are flowrun.values.Conditioning: entries with an embedding
[1, tokens, width] and named fields for how the sampler applies them (flowrun/diffusion/guidance.py
reads them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.files import EMBEDDINGS_IN_PROMPT
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Conditioning


class TextParams(NodeParams):
    text: str = Field("", description="Prompt; (word:1.2) and (word) weight tokens, as in ComfyUI.")


@node("CLIPTextEncode", outputs={"conditioning": ports.CONDITIONING}, category="conditioning",
      files={"text": EMBEDDINGS_IN_PROMPT})
def clip_text_encode(p: TextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt with the CLIP text encoder(s); `embedding:NAME` words are textual-inversion
    embeddings from embeddings/ on the model search path."""
    from flowrun.diffusion.clip import encode

    try:
        return encode(clip, p.text, embeddings=_embeddings(ctx), warn=ctx.warn)
    except (ValueError, FileNotFoundError) as exc:
        raise NodeError(str(exc)) from None


def _embeddings(ctx):
    """name -> the contents of embeddings/NAME, for the prompts' `embedding:NAME` words."""
    from flowrun.diffusion.clip import read_embedding
    from flowrun.diffusion.detect import CheckpointError

    def read(name: str) -> dict:
        try:
            return read_embedding(ctx.files.path("embeddings", name), ctx.files.allow_pickle)
        except CheckpointError as exc:  # refused pickle, damaged file: the node's message
            raise ValueError(str(exc)) from None

    return read


class SdxlTextParams(NodeParams):  # ComfyUI's field order
    width: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="Size the image is said to have (size conditioning).")
    height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    crop_w: int = Field(0, ge=0, le=MAX_RESOLUTION, description="Crop offset said to have been taken (0: uncropped).")
    crop_h: int = Field(0, ge=0, le=MAX_RESOLUTION)
    target_width: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    target_height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    text_g: str = Field("", description="Prompt for OpenCLIP-bigG.")
    text_l: str = Field("", description="Prompt for CLIP-L.")


@node("CLIPTextEncodeSDXL", outputs={"conditioning": ports.CONDITIONING}, category="conditioning",
      files={"text_g": EMBEDDINGS_IN_PROMPT, "text_l": EMBEDDINGS_IN_PROMPT})
def clip_text_encode_sdxl(p: SdxlTextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for each of SDXL's text encoders, with explicit size and crop conditioning."""
    from flowrun.diffusion.clip import encode_sdxl

    extra = p.model_dump(exclude={"text_g", "text_l"})
    try:
        return encode_sdxl(clip, p.text_g, p.text_l, extra, embeddings=_embeddings(ctx), warn=ctx.warn)
    except (ValueError, FileNotFoundError) as exc:
        raise NodeError(str(exc)) from None


class RefinerTextParams(NodeParams):  # ComfyUI's field order
    ascore: float = Field(6.0, ge=0.0, le=1000.0, description="Aesthetic score the refiner aims at (ComfyUI: 6).")
    width: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    text: str = ""


@node("CLIPTextEncodeSDXLRefiner", outputs={"conditioning": ports.CONDITIONING}, category="conditioning",
      files={"text": EMBEDDINGS_IN_PROMPT})
def clip_text_encode_sdxl_refiner(p: RefinerTextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for the SDXL refiner, with its size and aesthetic-score conditioning."""
    from flowrun.diffusion.clip import encode_refiner

    try:
        return encode_refiner(clip, p.text, {"aesthetic_score": p.ascore, "width": p.width, "height": p.height},
                              embeddings=_embeddings(ctx), warn=ctx.warn)
    except (ValueError, FileNotFoundError) as exc:
        raise NodeError(str(exc)) from None


class LastLayerParams(NodeParams):
    stop_at_clip_layer: int = Field(-1, ge=-24, le=-1)


@node("CLIPSetLastLayer", outputs={"clip": ports.CLIP}, category="conditioning")
def clip_set_last_layer(p: LastLayerParams, ctx, *, clip: ports.Clip) -> ports.Clip:
    """Read the text encoder's output from an earlier layer (-2 is the usual "clip skip 2")."""
    return clip.with_layer(p.stop_at_clip_layer)


@node("ConditioningCombine", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_combine(p: NoParams, ctx, *, conditioning_1: Conditioning, conditioning_2: Conditioning) -> Conditioning:
    """Both conditionings, averaged by the sampler where their areas overlap."""
    return Conditioning(conditioning_1) + conditioning_2


@node("ConditioningConcat", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_concat(p: NoParams, ctx, *, conditioning_to: Conditioning, conditioning_from: Conditioning) -> Conditioning:
    """Append the first entry of conditioning_from's tokens to every entry of conditioning_to."""
    import torch

    extra = conditioning_from[0].embedding
    return Conditioning(conditioning_to).map(lambda e: e.replace(embedding=torch.cat((e.embedding, extra), dim=1)))


class AreaParams(NodeParams):
    width: int = Field(64, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(64, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    strength: float = Field(1.0, ge=0.0, le=10.0)


@node("ConditioningSetArea", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_set_area(p: AreaParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """Limit a conditioning to a rectangle of the image (pixels), with a strength."""
    area = (p.height // 8, p.width // 8, p.y // 8, p.x // 8)
    return Conditioning(conditioning).map(lambda e: e.replace(area=area, area_percent=None, strength=p.strength,
                                                              set_area_to_bounds=False))


class AreaPercentageParams(NodeParams):
    width: float = Field(1.0, ge=0.0, le=1.0)
    height: float = Field(1.0, ge=0.0, le=1.0)
    x: float = Field(0.0, ge=0.0, le=1.0)
    y: float = Field(0.0, ge=0.0, le=1.0)
    strength: float = Field(1.0, ge=0.0, le=10.0)


@node("ConditioningSetAreaPercentage", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_set_area_percentage(p: AreaPercentageParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """Limit a conditioning to a rectangle given as parts of the image (0..1), whatever its size."""
    area = (p.height, p.width, p.y, p.x)
    return Conditioning(conditioning).map(lambda e: e.replace(area_percent=area, area=None, strength=p.strength,
                                                              set_area_to_bounds=False))


class StrengthParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=10.0)


@node("ConditioningSetAreaStrength", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_set_area_strength(p: StrengthParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """Set the weight of a conditioning where it overlaps others."""
    return Conditioning(conditioning).map(lambda e: e.replace(strength=p.strength))


class MaskParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=10.0)
    set_cond_area: Literal["default", "mask bounds"] = "default"


@node("ConditioningSetMask", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_set_mask(p: MaskParams, ctx, *, conditioning: Conditioning, mask: ports.Mask) -> Conditioning:
    """Apply a conditioning through a mask (resized to the latent); with "mask bounds", only over the
    rectangle the mask covers, sampled at that size."""
    import numpy as np
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    return Conditioning(conditioning).map(lambda e: e.replace(mask=tensor, mask_strength=p.strength,
                                                              set_area_to_bounds=p.set_cond_area != "default"))


class TimestepRangeParams(NodeParams):
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(1.0, ge=0.0, le=1.0)


@node("ConditioningSetTimestepRange", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning")
def conditioning_set_timestep_range(p: TimestepRangeParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """Apply a conditioning only from `start` to `end` of the schedule (0: the first step, 1: the last)."""
    return Conditioning(conditioning).map(lambda e: e.replace(timestep_range=(p.start, p.end)))


@node("ConditioningZeroOut", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning")
def conditioning_zero_out(p: NoParams, ctx, *, conditioning: Conditioning) -> Conditioning:
    """The same entries with zero embeddings (and zero pooled outputs): "no prompt" for models that want one."""
    import torch

    return Conditioning(conditioning).map(lambda e: e.replace(
        embedding=torch.zeros_like(e.embedding),
        pooled_output=None if e.pooled_output is None else torch.zeros_like(e.pooled_output)))


class AverageParams(NodeParams):
    conditioning_to_strength: float = Field(1.0, ge=0.0, le=1.0)


@node("ConditioningAverage", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_average(p: AverageParams, ctx, *, conditioning_to: Conditioning,
                         conditioning_from: Conditioning) -> Conditioning:
    """conditioning_to * strength + conditioning_from * (1 - strength), entry by entry with the first entry
    of conditioning_from (its tokens cut or zero-padded to the other's length), pooled outputs likewise."""
    import torch

    if len(conditioning_from) > 1:
        ctx.warn("ConditioningAverage uses only the first entry of conditioning_from")
    source = conditioning_from[0]
    s = p.conditioning_to_strength

    def mix(e):
        other = source.embedding[:, :e.embedding.shape[1]]
        if other.shape[1] < e.embedding.shape[1]:
            pad = torch.zeros((1, e.embedding.shape[1] - other.shape[1], other.shape[2]), dtype=other.dtype)
            other = torch.cat([other, pad], dim=1)
        pooled_to = e.pooled_output if e.pooled_output is not None else source.pooled_output
        pooled = pooled_to
        if source.pooled_output is not None and pooled_to is not None:
            pooled = pooled_to * s + source.pooled_output * (1.0 - s)
        return e.replace(embedding=e.embedding * s + other * (1.0 - s), pooled_output=pooled)

    return Conditioning(conditioning_to).map(mix)
