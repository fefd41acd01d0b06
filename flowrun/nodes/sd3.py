"""Nodes of the SD3 family, ComfyUI's names and fields (comfy_extras/nodes_sd3.py): TripleCLIPLoader (CLIP-L,
CLIP-G and T5-XXL in any order, told from the weights) and CLIPTextEncodeSD3 (a prompt for each encoder).
CheckpointLoaderSimple, UNETLoader, VAELoader, CLIPLoader and DualCLIPLoader (type sd3) read SD3 files too;
ModelSamplingSD3 and EmptySD3LatentImage are in flow_models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.model_files import loading
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Conditioning


def load_sd3_text(ctx, fields: dict[str, str]) -> ports.Clip:
    """SD3's text encoders from the files the node's `fields` name (field -> file name), through the model pool."""
    from flowrun.diffusion.sd3_text_files import load_text_encoders

    fingerprints = [ctx.files.fingerprint(f) for f in fields]
    paths = loading(lambda: [ctx.files.path("text_encoders", n) for n in fields.values()])
    clip, = loading(lambda: ctx.models.load(("clip", "sd3", *fingerprints), lambda: (
        load_text_encoders(paths, fingerprints, list(fields), allow_pickle=ctx.files.allow_pickle),)))
    return clip


class TripleClipParams(NodeParams):
    clip_name1: str = Field(min_length=1, description="CLIP-L, CLIP-G or T5-XXL file by name, under text_encoders/ "
                            "or clip/ (the three in any order).")
    clip_name2: str = Field(min_length=1)
    clip_name3: str = Field(min_length=1)

    _inside1 = stays_inside("clip_name1", LEAVES_MODELS)
    _inside2 = stays_inside("clip_name2", LEAVES_MODELS)
    _inside3 = stays_inside("clip_name3", LEAVES_MODELS)

    @field_validator("clip_name2", "clip_name3")
    @classmethod
    def _one_file_each(cls, name: str, info):
        for other in ("clip_name1", "clip_name2"):
            if other != info.field_name and info.data.get(other) == name:
                raise ValueError(f"{other} and {info.field_name} name the same file '{name}'; TripleCLIPLoader takes "
                                 "CLIP-L, CLIP-G and T5-XXL, one file each")
        return name


@node("TripleCLIPLoader", outputs={"clip": ports.CLIP}, category="advanced/loaders",
      files={"clip_name1": "text_encoders", "clip_name2": "text_encoders", "clip_name3": "text_encoders"})
def triple_clip_loader(p: TripleClipParams, ctx) -> ports.Clip:
    """Load SD3's three text encoders (CLIP-L, CLIP-G, T5-XXL) as one CLIP."""
    return load_sd3_text(ctx, {"clip_name1": p.clip_name1, "clip_name2": p.clip_name2, "clip_name3": p.clip_name3})


class Sd3TextParams(NodeParams):  # ComfyUI's field order
    clip_l: str = Field("", description="Prompt for CLIP-L.")
    clip_g: str = Field("", description="Prompt for CLIP-G.")
    t5xxl: str = Field("", description="Prompt for T5-XXL.")
    empty_padding: Literal["none", "empty_prompt"] = Field(
        "none", description="none: an empty prompt leaves its encoder out; empty_prompt: it encodes the empty prompt.")


@node("CLIPTextEncodeSD3", outputs={"conditioning": ports.CONDITIONING}, category="advanced/conditioning")
def clip_text_encode_sd3(p: Sd3TextParams, ctx, *, clip: ports.Clip) -> Conditioning:
    """Encode a prompt for each of SD3's text encoders."""
    from flowrun.diffusion.configs import SD3
    from flowrun.diffusion.text_sd3 import encode_sd3

    if clip.family != SD3:
        raise NodeError(f"input 'clip': CLIPTextEncodeSD3 is for SD3's text encoders; this CLIP is {clip.family}")
    try:
        return encode_sd3(clip, p.clip_l, p.clip_g, p.t5xxl, empty_padding=p.empty_padding == "empty_prompt")
    except ValueError as exc:
        raise NodeError(str(exc)) from None
