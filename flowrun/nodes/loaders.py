"""Model loading nodes: CheckpointLoaderSimple and LoraLoader (ComfyUI's names and fields).

Files are found by name on the model search path (see flowrun.diffusion.locate); their content hashes
enter the cache keys, so replacing a file re-runs what depends on it.
"""

from __future__ import annotations

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.image import stays_inside
from flowrun.nodes.registry import NodeParams, node

_LEAVES = "the name would leave the models folder"


class CheckpointParams(NodeParams):
    ckpt_name: str = Field(min_length=1, description="Checkpoint file or diffusers folder, by name (e.g. flowrun-tiny).")

    _inside = stays_inside("ckpt_name", _LEAVES)


def _fingerprint(kind: str, field: str):
    def compute(literals, env) -> dict:
        from flowrun.diffusion.locate import fingerprint_path, locate

        path = locate(literals[field], kind, env.model_roots())
        return {field: fingerprint_path(path, env.sha256)}

    return compute


@node("CheckpointLoaderSimple", params=CheckpointParams, category="loaders",
      outputs={"model": ports.MODEL, "clip": ports.CLIP, "vae": ports.VAE},
      fingerprint=_fingerprint("checkpoints", "ckpt_name"))
def checkpoint_loader(p: CheckpointParams, ctx):
    """Load a checkpoint (single .safetensors in the original layout, or a diffusers folder)."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.locate import locate
    from flowrun.errors import NodeError

    try:
        path = locate(p.ckpt_name, "checkpoints", ctx.files.model_roots())
        model, clip, vae = load_bundle(path, ctx.files, ctx.task.fingerprints["ckpt_name"])
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return {"model": model, "clip": clip, "vae": vae}


class LoraParams(NodeParams):
    lora_name: str = Field(min_length=1, description="LoRA file by name, under loras/ on the model search path.")
    strength_model: float = Field(1.0, ge=-100.0, le=100.0)
    strength_clip: float = Field(1.0, ge=-100.0, le=100.0)

    _inside = stays_inside("lora_name", _LEAVES)


@node("LoraLoader", params=LoraParams, inputs={"model": ports.MODEL, "clip": ports.CLIP}, category="loaders",
      outputs={"model": ports.MODEL, "clip": ports.CLIP}, fingerprint=_fingerprint("loras", "lora_name"))
def lora_loader(p: LoraParams, ctx, *, model, clip):
    """Apply a kohya/A1111-layout LoRA to the model and the text encoder, each with its strength."""
    from flowrun.diffusion.detect import CheckpointError
    from flowrun.diffusion.locate import locate
    from flowrun.diffusion.lora import read_lora
    from flowrun.errors import NodeError

    try:
        path = locate(p.lora_name, "loras", ctx.files.model_roots())
        unet_patches, clip_patches = read_lora(path, model.unet, clip.models, p.strength_model, p.strength_clip)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise NodeError(str(exc)) from None
    return {"model": model.with_patches(unet_patches), "clip": clip.with_patches(clip_patches)}
