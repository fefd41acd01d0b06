"""Image prompts, ComfyUI's names and fields: CLIPVisionLoader, CLIPVisionEncode, unCLIPCheckpointLoader,
unCLIPConditioning, StyleModelLoader and StyleModelApply.

A CLIP vision model (CLIP_VISION) encodes an image into a CLIP_VISION_OUTPUT (flowrun.values.ClipVisionOutput);
an unCLIP model takes its embedding as class labels (flowrun/diffusion/unclip.py), a style model turns its
hidden states into tokens appended to the prompt's (flowrun/diffusion/style_model.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.model_files import load_one, loading
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import ClipVisionOutput, Conditioning


class ClipVisionParams(NodeParams):
    clip_name: str = Field(min_length=1, description="CLIP vision model by name, under clip_vision/ (ViT-L/14, "
                                                     "ViT-H/14 or ViT-bigG/14; transformers' or OpenAI's layout; "
                                                     "SigLIP for Flux Redux).")

    _inside = stays_inside("clip_name", LEAVES_MODELS)


@node("CLIPVisionLoader", outputs={"clip_vision": ports.CLIP_VISION}, category="loaders",
      files={"clip_name": "clip_vision"})
def clip_vision_loader(p: ClipVisionParams, ctx) -> ports.ClipVision:
    """Load a CLIP vision model (the image encoder of image prompts); it runs on the CPU."""
    from flowrun.diffusion import clip_vision

    return load_one(ctx, "clip_name", "clip_vision", p.clip_name,
                    lambda path, fp: clip_vision.load(path, fp, allow_pickle=ctx.files.allow_pickle))


class EncodeParams(NodeParams):
    crop: Literal["center", "none"] = Field("center", description="center: resize the shortest side and crop the "
                                                                  "middle square; none: squeeze the whole image.")


@node("CLIPVisionEncode", outputs={"clip_vision_output": ports.CLIP_VISION_OUTPUT}, category="conditioning")
def clip_vision_encode(p: EncodeParams, ctx, *, clip_vision: ports.ClipVision, image: ports.Image) -> ClipVisionOutput:
    """Encode an image batch with a CLIP vision model: its projected embeddings and hidden states."""
    from flowrun.diffusion.clip_vision import encode

    return encode(clip_vision, image, crop=p.crop == "center")


class UnclipCheckpointParams(NodeParams):
    ckpt_name: str = Field(min_length=1, description="SD 2.1 unCLIP checkpoint by name, under checkpoints/.")

    _inside = stays_inside("ckpt_name", LEAVES_MODELS)


@node("unCLIPCheckpointLoader", outputs={"model": ports.MODEL, "clip": ports.CLIP, "vae": ports.VAE,
                                         "clip_vision": ports.CLIP_VISION},
      category="loaders", files={"ckpt_name": "checkpoints"})
def unclip_checkpoint_loader(p: UnclipCheckpointParams, ctx) -> dict:
    """Load an unCLIP checkpoint: the model, its text encoder, VAE and the CLIP vision model whose image
    embeddings its UNet takes (unCLIPConditioning)."""
    from flowrun.diffusion.unclip_checkpoint import load_bundle

    fingerprint, device = ctx.files.fingerprint("ckpt_name"), ctx.device.device
    path = loading(lambda: ctx.files.path("checkpoints", p.ckpt_name))
    model, clip, vae, vision = loading(lambda: ctx.models.load(
        ("unclip", fingerprint, device, ctx.device.dtype),
        lambda: load_bundle(path, fingerprint, device=device, allow_pickle=ctx.files.allow_pickle)))
    return {"model": model, "clip": clip, "vae": vae, "clip_vision": vision}


class UnclipConditioningParams(NodeParams):
    strength: float = Field(1.0, ge=-10.0, le=10.0)
    noise_augmentation: float = Field(0.0, ge=0.0, le=1.0, description="How much the image embedding is "
                                                                      "noised (0: as it is; more: looser variations).")


@node("unCLIPConditioning", outputs={"conditioning": ports.CONDITIONING}, category="conditioning")
def unclip_conditioning(p: UnclipConditioningParams, ctx, *, conditioning: Conditioning,
                        clip_vision_output: ClipVisionOutput) -> Conditioning:
    """Add an image prompt for an unCLIP model to every entry (image prompts add up); strength 0 leaves the
    conditioning as it is."""
    if p.strength == 0:
        return conditioning
    prompt = (clip_vision_output.image_embeds, p.strength, p.noise_augmentation)
    return Conditioning(conditioning).map(lambda e: e.replace(unclip=tuple(e.unclip) + (prompt,)))


class StyleModelParams(NodeParams):
    style_model_name: str = Field(min_length=1, description="Style model by name, under style_models/ "
                                                            "(the T2I style adapter, or Flux Redux).")

    _inside = stays_inside("style_model_name", LEAVES_MODELS)


@node("StyleModelLoader", outputs={"style_model": ports.STYLE_MODEL}, category="loaders",
      files={"style_model_name": "style_models"})
def style_model_loader(p: StyleModelParams, ctx) -> ports.StyleModel:
    """Load a style model (TencentARC's T2I style adapter); it runs on the CPU."""
    from flowrun.diffusion import style_model

    return load_one(ctx, "style_model_name", "style_models", p.style_model_name,
                    lambda path, fp: style_model.load(path, fp, allow_pickle=ctx.files.allow_pickle))


class StyleApplyParams(NodeParams):
    strength: float = Field(1.0, ge=0.0, le=10.0)
    # ComfyUI's "attn_bias" (a log-strength bias on the style tokens in cross-attention) is not implemented
    strength_type: Literal["multiply"] = Field("multiply", description="multiply: the style tokens are scaled by strength.")


@node("StyleModelApply", outputs={"conditioning": ports.CONDITIONING}, category="conditioning/style_model")
def style_model_apply(p: StyleApplyParams, ctx, *, conditioning: Conditioning, style_model: ports.StyleModel,
                      clip_vision_output: ClipVisionOutput) -> Conditioning:
    """Append the style model's tokens for the image(s) (all images' tokens in a row, times strength) to
    every entry's text embedding."""
    import torch

    try:
        tokens = style_model.tokens(clip_vision_output)
    except ValueError as exc:
        raise NodeError(str(exc)) from None
    tokens = tokens.flatten(0, 1).unsqueeze(0) * p.strength

    def append(entry):
        if entry.embedding.shape[-1] != tokens.shape[-1]:
            raise NodeError(f"input 'conditioning': text embeddings of width {entry.embedding.shape[-1]}, the style "
                            f"model makes tokens of width {tokens.shape[-1]} (the style adapter goes with SD1 models: "
                            "768, Redux with Flux: 4096)")
        return entry.replace(embedding=torch.cat([entry.embedding, tokens.to(entry.embedding.dtype)], dim=1))

    return Conditioning(conditioning).map(append)
