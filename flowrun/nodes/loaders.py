"""Model loading nodes: CheckpointLoaderSimple and LoraLoader (ComfyUI's names and fields).

Files are found by name on the model search path (flowrun.files); their content fingerprints enter the
cache keys, so replacing a file re-runs what depends on it. Loaded models go through the run's model
pool, so nodes loading the same file share one copy while it is held.
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.registry import NodeParams, node


class CheckpointParams(NodeParams):
    ckpt_name: str = Field(min_length=1, description="Checkpoint file or diffusers folder, by name (e.g. flowrun-tiny).")

    _inside = stays_inside("ckpt_name", LEAVES_MODELS)


@node("CheckpointLoaderSimple", outputs={"model": ports.MODEL, "clip": ports.CLIP, "vae": ports.VAE},
      category="loaders", files={"ckpt_name": "checkpoints"})
def checkpoint_loader(p: CheckpointParams, ctx) -> dict:
    """Load a checkpoint (single .safetensors in the original layout, or a diffusers folder)."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.precision import slow_bfloat16

    fingerprint = ctx.files.fingerprint("ckpt_name")
    device = ctx.device.device
    if note := slow_bfloat16(device, ctx.device.requested_dtype):
        ctx.warn(note)
    try:
        path = ctx.files.path("checkpoints", p.ckpt_name)
        model, clip, vae = ctx.models.load(
            ("checkpoint", fingerprint, device, ctx.device.dtype),
            lambda: load_bundle(path, fingerprint, device=device, allow_pickle=ctx.files.allow_pickle,
                                dtype=ctx.device.requested_dtype))
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return {"model": model, "clip": clip, "vae": vae}


class LoraParams(NodeParams):
    lora_name: str = Field(min_length=1, description="LoRA file by name, under loras/ on the model search path.")
    strength_model: float = Field(1.0, ge=-100.0, le=100.0)
    strength_clip: float = Field(1.0, ge=-100.0, le=100.0)

    _inside = stays_inside("lora_name", LEAVES_MODELS)


@node("LoraLoader", outputs={"model": ports.MODEL, "clip": ports.CLIP}, category="loaders",
      files={"lora_name": "loras"})
def lora_loader(p: LoraParams, ctx, *, model: ports.Model, clip: ports.Clip) -> dict:
    """Apply a LoRA (kohya, LoCon, LoHa, LoKr, diff, DoRA, diffusers or PEFT layout) to the model and the
    text encoder, each with its strength; keys that match no layer are reported as a warning."""
    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.lora import read_lora

    try:
        path = ctx.files.path("loras", p.lora_name)
        unet_patches, clip_patches = read_lora(path, model.unet, clip.models, p.strength_model, p.strength_clip,
                                               family=model.family, warn=ctx.warn)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return {"model": model.with_patches(unet_patches), "clip": clip.with_patches(clip_patches)}
