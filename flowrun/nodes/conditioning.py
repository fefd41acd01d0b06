"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningConcat,
ConditioningSetArea. CONDITIONING values are flowrun.values.Conditioning: entries with an embedding
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
