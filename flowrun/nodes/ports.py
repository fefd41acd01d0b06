"""Port types: the tags on edges, named as in ComfyUI; which of them may feed which; and the Python
annotations that declare them in a node's signature.

A node's keyword-only parameters are its inputs, and their annotations say the port type: a class of
flowrun.values (`Latent`, `Conditioning`, `Sampler`, `Noise`, `Guider`), one of the tagged aliases below
(`Model`, `Image`, `Sigmas`...), or a plain `int`, `float`, `str`, `bool`. Nothing here imports torch.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from flowrun.values import ClipVisionOutput, Conditioning, Guider, Latent, Noise, Sampler

MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
SAMPLER = "SAMPLER"
SIGMAS = "SIGMAS"
NOISE = "NOISE"
GUIDER = "GUIDER"
CLIP_SCORE_MODEL = "CLIP_SCORE_MODEL"  # a full CLIPModel used as a judge (flowrun's own type; ComfyUI has none)
CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
STYLE_MODEL = "STYLE_MODEL"
GLIGEN = "GLIGEN"
UPSCALE_MODEL = "UPSCALE_MODEL"
CONTROL_NET = "CONTROL_NET"
ANY = "*"

ALL = (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK, INT, FLOAT, STRING, BOOLEAN, SAMPLER, SIGMAS, NOISE,
       GUIDER, CLIP_SCORE_MODEL, CLIP_VISION, CLIP_VISION_OUTPUT, STYLE_MODEL, GLIGEN, UPSCALE_MODEL, CONTROL_NET)

# Loaded models are large and process-bound: they stay in memory and never go to the disk cache; so does
# a GUIDER, which holds a model, and a CONTROL_NET.
MEMORY_ONLY = frozenset({MODEL, CLIP, VAE, GUIDER, CLIP_SCORE_MODEL, CLIP_VISION, STYLE_MODEL, GLIGEN, UPSCALE_MODEL,
                         CONTROL_NET})


@dataclass(frozen=True)
class Port:
    """Marks an annotation with its port type: `Annotated[Any, Port("MODEL")]`."""

    type: str


Model = Annotated[Any, Port(MODEL)]  # flowrun.diffusion.model.DiffusionModel
Clip = Annotated[Any, Port(CLIP)]  # flowrun.diffusion.model.TextEncoder
Vae = Annotated[Any, Port(VAE)]  # flowrun.diffusion.model.Vae
Image = Annotated[Any, Port(IMAGE)]  # float32 numpy [batch, height, width, channels] in 0..1
Mask = Annotated[Any, Port(MASK)]  # float32 numpy [batch, height, width] in 0..1
ClipScoreModel = Annotated[Any, Port(CLIP_SCORE_MODEL)]  # flowrun.diffusion.clip_judge.ClipJudge
ClipVision = Annotated[Any, Port(CLIP_VISION)]  # flowrun.diffusion.clip_vision.ClipVision
StyleModel = Annotated[Any, Port(STYLE_MODEL)]  # flowrun.diffusion.style_model.StyleModel
Gligen = Annotated[Any, Port(GLIGEN)]  # flowrun.diffusion.gligen.Gligen
UpscaleModel = Annotated[Any, Port(UPSCALE_MODEL)]  # spandrel.ImageModelDescriptor
ControlNet = Annotated[Any, Port(CONTROL_NET)]  # flowrun.diffusion.controlnet_files.ControlFile
Sigmas = Annotated[Any, Port(SIGMAS)]  # 1-D float32 torch tensor, decreasing to 0 (empty: nothing to do)

_BY_CLASS = {ClipVisionOutput: CLIP_VISION_OUTPUT, Latent: LATENT, Conditioning: CONDITIONING, Sampler: SAMPLER, Noise: NOISE, Guider: GUIDER, bool: BOOLEAN, int: INT, float: FLOAT, str: STRING}


def compatible(source: str, target: str) -> bool:
    """Whether an output of type `source` may feed an input of type `target`."""
    if source == target or ANY in (source, target):
        return True
    return source == INT and target == FLOAT  # an int is a valid float, never the other way round


def port_of(annotation: Any) -> str | None:
    """The port type an input annotation declares (None: it declares none), ignoring `| None`."""
    if typing.get_origin(annotation) is Annotated:
        tags = [m for m in annotation.__metadata__ if isinstance(m, Port)]
        return tags[0].type if tags else port_of(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {port_of(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    return _BY_CLASS.get(annotation)


def of_annotation(annotation: typing.Any) -> str:
    """The port type of a literal field, from its Python annotation (for links into `with:` fields)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return of_annotation(type(values[0])) if values else ANY
    if origin is Annotated:
        return of_annotation(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {of_annotation(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else ANY
    return {bool: BOOLEAN, int: INT, float: FLOAT, str: STRING}.get(annotation, ANY)
