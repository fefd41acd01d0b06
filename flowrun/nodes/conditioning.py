"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine, ConditioningConcat,
ConditioningSetArea. CONDITIONING values are ComfyUI's: a list of [tensor [1, tokens, width], extras]."""

from __future__ import annotations

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.image import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, node


class TextParams(NodeParams):
    text: str = Field("", description="Prompt; (word:1.2) and (word) weight tokens, as in ComfyUI.")


@node("CLIPTextEncode", params=TextParams, inputs={"clip": ports.CLIP}, outputs={"conditioning": ports.CONDITIONING},
      category="conditioning")
def clip_text_encode(p: TextParams, ctx, *, clip):
    """Encode a prompt with the CLIP text encoder(s)."""
    from flowrun.diffusion.clip import encode
    from flowrun.errors import NodeError

    try:
        return encode(clip, p.text)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class LastLayerParams(NodeParams):
    stop_at_clip_layer: int = Field(-1, ge=-24, le=-1)


@node("CLIPSetLastLayer", params=LastLayerParams, inputs={"clip": ports.CLIP}, outputs={"clip": ports.CLIP},
      category="conditioning")
def clip_set_last_layer(p: LastLayerParams, ctx, *, clip):
    """Read the text encoder's output from an earlier layer (-2 is the usual "clip skip 2")."""
    return clip.with_layer(p.stop_at_clip_layer)


@node("ConditioningCombine", inputs={"conditioning_1": ports.CONDITIONING, "conditioning_2": ports.CONDITIONING},
      outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_combine(p, ctx, *, conditioning_1, conditioning_2):
    """Both conditionings, averaged by the sampler where their areas overlap."""
    return list(conditioning_1) + list(conditioning_2)


@node("ConditioningConcat", inputs={"conditioning_to": ports.CONDITIONING, "conditioning_from": ports.CONDITIONING},
      outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_concat(p, ctx, *, conditioning_to, conditioning_from):
    """Append the first entry of conditioning_from's tokens to every entry of conditioning_to."""
    import torch

    extra = conditioning_from[0][0]
    return [[torch.cat((cond, extra), dim=1), dict(opts)] for cond, opts in conditioning_to]


class AreaParams(NodeParams):
    width: int = Field(64, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(64, ge=64, le=MAX_RESOLUTION, multiple_of=8)
    x: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    y: int = Field(0, ge=0, le=MAX_RESOLUTION, multiple_of=8)
    strength: float = Field(1.0, ge=0.0, le=10.0)


@node("ConditioningSetArea", params=AreaParams, inputs={"conditioning": ports.CONDITIONING},
      outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def conditioning_set_area(p: AreaParams, ctx, *, conditioning):
    """Limit a conditioning to a rectangle of the image (pixels), with a strength."""
    area = (p.height // 8, p.width // 8, p.y // 8, p.x // 8)
    return [[cond, {**opts, "area": area, "strength": p.strength, "set_area_to_bounds": False}]
            for cond, opts in conditioning]
