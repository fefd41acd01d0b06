"""Conditioning nodes: CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, CLIPSetLastLayer,
ConditioningCombine, ConditioningConcat, ConditioningSetArea. CONDITIONING values are flowrun.values.Conditioning: entries with an embedding
[1, tokens, width] and named fields for how the sampler applies them."""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Conditioning


class TextParams(NodeParams):
    text: str = Field("", description="Prompt; (word:1.2) and (word) weight tokens, as in ComfyUI.")


@node("CLIPTextEncode", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def clip_text_encode(p: TextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt with the CLIP text encoder(s)."""
    from flowrun.diffusion.clip import encode

    try:
        return encode(clip, p.text)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class SdxlTextParams(NodeParams):  # ComfyUI's field order
    width: int = Field(1024, ge=0, le=MAX_RESOLUTION, description="Size the image is said to have (size conditioning).")
    height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    crop_w: int = Field(0, ge=0, le=MAX_RESOLUTION, description="Crop offset said to have been taken (0: uncropped).")
    crop_h: int = Field(0, ge=0, le=MAX_RESOLUTION)
    target_width: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    target_height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    text_g: str = Field("", description="Prompt for OpenCLIP-bigG.")
    text_l: str = Field("", description="Prompt for CLIP-L.")


@node("CLIPTextEncodeSDXL", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def clip_text_encode_sdxl(p: SdxlTextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for each of SDXL's text encoders, with explicit size and crop conditioning."""
    from flowrun.diffusion.clip import encode_sdxl

    extra = p.model_dump(exclude={"text_g", "text_l"})
    try:
        return encode_sdxl(clip, p.text_g, p.text_l, extra)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class RefinerTextParams(NodeParams):  # ComfyUI's field order
    ascore: float = Field(6.0, ge=0.0, le=1000.0, description="Aesthetic score the refiner aims at (ComfyUI: 6).")
    width: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    height: int = Field(1024, ge=0, le=MAX_RESOLUTION)
    text: str = ""


@node("CLIPTextEncodeSDXLRefiner", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def clip_text_encode_sdxl_refiner(p: RefinerTextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for the SDXL refiner, with its size and aesthetic-score conditioning."""
    from flowrun.diffusion.clip import encode_refiner

    try:
        return encode_refiner(clip, p.text, {"aesthetic_score": p.ascore, "width": p.width, "height": p.height})
    except ValueError as exc:
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
    return Conditioning(conditioning).map(lambda e: e.replace(area=area, strength=p.strength, set_area_to_bounds=False))
