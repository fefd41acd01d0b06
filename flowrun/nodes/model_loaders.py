"""Loaders for models kept as separate parts, ComfyUI's names and fields: VAELoader, CLIPLoader,
DualCLIPLoader, UNETLoader, CheckpointLoader (with an LDM config), LoraLoaderModelOnly and
HypernetworkLoader.

As with CheckpointLoaderSimple, files are found on the model search path (text encoders in
text_encoders/ or clip/, UNets in diffusion_models/ or unet/), their fingerprints enter the cache keys,
and loaded parts go through the run's model pool, shared while something holds them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.files import TINY_VAES, VAE_FILES
from flowrun.nodes import ports
from flowrun.nodes.fields import LEAVES_MODELS, stays_inside
from flowrun.nodes.model_files import load_one, loading
from flowrun.nodes.registry import NodeParams, node

WeightDtype = Literal["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


class VaeParams(NodeParams):
    vae_name: str = Field(min_length=1, description="VAE file by name, under vae/ (original or diffusers layout); "
                          "taesd or taesdxl: the tiny autoencoder whose <name>_encoder and <name>_decoder files lie "
                          "in vae_approx/.")

    _inside = stays_inside("vae_name", LEAVES_MODELS)


@node("VAELoader", outputs={"vae": ports.VAE}, category="loaders", files={"vae_name": VAE_FILES})
def vae_loader(p: VaeParams, ctx) -> ports.Vae:
    """Load a VAE on its own (to replace the one a checkpoint carries); `taesd` and `taesdxl` are the tiny
    autoencoders whose encoder and decoder files lie in vae_approx/."""
    from flowrun.diffusion.components import load_vae
    from flowrun.diffusion.taesd import load as load_tiny

    fingerprint, device = ctx.files.fingerprint("vae_name"), ctx.device.device
    paths = [loading(lambda k=kind, n=name: ctx.files.path(k, n)) for kind, name in VAE_FILES.files(p.vae_name)]
    if p.vae_name in TINY_VAES:
        build = lambda: load_tiny(p.vae_name, *paths, fingerprint, device=device,  # noqa: E731
                                  allow_pickle=ctx.files.allow_pickle)
    else:
        build = lambda: load_vae(paths[0], fingerprint, device=device, allow_pickle=ctx.files.allow_pickle,  # noqa: E731
                                 dtype=ctx.device.requested_dtype)
    vae, = loading(lambda: ctx.models.load(("vae", fingerprint, device, ctx.device.dtype), lambda: (build(),)))
    return vae


class ClipParams(NodeParams):
    clip_name: str = Field(min_length=1, description="Text encoder file by name, under text_encoders/ or clip/.")
    type: Literal["stable_diffusion", "sd3", "lumina2", "qwen_image"] = Field(
        "stable_diffusion", description="stable_diffusion: SD1's CLIP-L or SD2's OpenCLIP-H, told from the weights; "
        "sd3: one of SD3's CLIP-L, CLIP-G or T5-XXL (the others left out); lumina2: Z-Image's Qwen3 4B; "
        "qwen_image: Qwen-Image's Qwen2.5-VL 7B.")

    _inside = stays_inside("clip_name", LEAVES_MODELS)


@node("CLIPLoader", outputs={"clip": ports.CLIP}, category="loaders", files={"clip_name": "text_encoders"})
def clip_loader(p: ClipParams, ctx) -> ports.Clip:
    """Load one text encoder (SD 1.x or 2.x, one of SD3's, Z-Image's Qwen3 4B, Qwen-Image's Qwen2.5-VL, or
    AuraFlow's Pile-T5 with any type)."""
    from flowrun.diffusion import auraflow_files, zimage_files
    from flowrun.diffusion.components import load_text_encoders

    if loading(lambda: auraflow_files.is_pile_t5_file(ctx.files.path("text_encoders", p.clip_name))):
        # AuraFlow's Pile-T5 XL: ComfyUI tells it from its weights, whatever the type says
        return load_one(ctx, "clip_name", "text_encoders", p.clip_name, lambda path, fp: (
            auraflow_files.load_text_encoder(path, fp, allow_pickle=ctx.files.allow_pickle)), "auraflow")
    if p.type == "lumina2" or loading(lambda: zimage_files.is_qwen3_file(ctx.files.path("text_encoders",
                                                                                         p.clip_name))):
        # Z-Image's Qwen3 4B: ComfyUI tells it from its weights (any type but flux2); another encoder is named
        return load_one(ctx, "clip_name", "text_encoders", p.clip_name, lambda path, fp: (
            zimage_files.load_text_encoder(path, fp, allow_pickle=ctx.files.allow_pickle)), "zimage")
    if p.type == "qwen_image":
        from flowrun.diffusion import qwen_image_files

        return load_one(ctx, "clip_name", "text_encoders", p.clip_name, lambda path, fp: (
            qwen_image_files.load_text_encoder(path, fp, allow_pickle=ctx.files.allow_pickle)), "qwen_image")
    if p.type == "sd3":
        from flowrun.nodes.sd3 import load_sd3_text

        return load_sd3_text(ctx, {"clip_name": p.clip_name})

    return load_one(ctx, "clip_name", "text_encoders", p.clip_name,
                    lambda path, fp: load_text_encoders([path], [fp], p.type, allow_pickle=ctx.files.allow_pickle),
                    p.type)


class DualClipParams(NodeParams):
    clip_name1: str = Field(min_length=1, description="CLIP-L file by name, under text_encoders/ or clip/.")
    clip_name2: str = Field(min_length=1, description="OpenCLIP-bigG file by name (the two may come in either order).")
    type: Literal["sdxl", "sd3", "flux"] = Field(
        "sdxl", description="sdxl: CLIP-L and OpenCLIP-bigG; sd3: two of SD3's CLIP-L, CLIP-G and T5-XXL, in either "
        "order (the third left out); flux: CLIP-L and T5-XXL (either order, told from the weights).")

    _inside1 = stays_inside("clip_name1", LEAVES_MODELS)
    _inside2 = stays_inside("clip_name2", LEAVES_MODELS)


@node("DualCLIPLoader", outputs={"clip": ports.CLIP}, category="loaders",
      files={"clip_name1": "text_encoders", "clip_name2": "text_encoders"})
def dual_clip_loader(p: DualClipParams, ctx) -> ports.Clip:
    """Load two text encoders as one CLIP: SDXL's, two of SD3's three, or Flux's CLIP-L and T5-XXL."""
    from flowrun.diffusion.components import load_text_encoders

    if p.type == "sd3":
        from flowrun.nodes.sd3 import load_sd3_text

        return load_sd3_text(ctx, {"clip_name1": p.clip_name1, "clip_name2": p.clip_name2})

    fingerprints = [ctx.files.fingerprint("clip_name1"), ctx.files.fingerprint("clip_name2")]
    paths = loading(lambda: [ctx.files.path("text_encoders", n) for n in (p.clip_name1, p.clip_name2)])
    clip, = loading(lambda: ctx.models.load(("clip", p.type, *fingerprints), lambda: (
        load_text_encoders(paths, fingerprints, p.type, allow_pickle=ctx.files.allow_pickle),)))
    return clip


class UnetParams(NodeParams):
    unet_name: str = Field(min_length=1, description="UNet file by name, under diffusion_models/ or unet/.")
    weight_dtype: WeightDtype = Field("default", description="fp8_*: weights rounded to that format, as ComfyUI "
                                      "stores them; computed in float32.")

    _inside = stays_inside("unet_name", LEAVES_MODELS)


@node("UNETLoader", outputs={"model": ports.MODEL}, category="loaders", files={"unet_name": "diffusion_models"})
def unet_loader(p: UnetParams, ctx) -> ports.Model:
    """Load a diffusion model (UNet) on its own; its family and prediction type come from the weights."""
    from flowrun.diffusion.components import load_unet
    from flowrun.diffusion.precision import slow_bfloat16

    device = ctx.device.device
    if note := slow_bfloat16(device, ctx.device.requested_dtype):
        ctx.warn(note)
    return load_one(ctx, "unet_name", "diffusion_models", p.unet_name,
                    lambda path, fp: load_unet(path, fp, device=device, weight_dtype=p.weight_dtype,
                                               allow_pickle=ctx.files.allow_pickle, dtype=ctx.device.requested_dtype),
                    device, p.weight_dtype, ctx.device.dtype)


class ConfigCheckpointParams(NodeParams):
    config_name: str = Field(min_length=1, description="LDM model config (e.g. v2-inference-v.yaml), under configs/.")
    ckpt_name: str = Field(min_length=1, description="Checkpoint file by name.")

    _inside_config = stays_inside("config_name", LEAVES_MODELS)
    _inside_ckpt = stays_inside("ckpt_name", LEAVES_MODELS)


@node("CheckpointLoader", outputs={"model": ports.MODEL, "clip": ports.CLIP, "vae": ports.VAE},
      category="loaders", files={"config_name": "configs", "ckpt_name": "checkpoints"})
def checkpoint_loader_with_config(p: ConfigCheckpointParams, ctx) -> dict:
    """Load a checkpoint as its LDM config says (its parameterization: `v` for v-prediction)."""
    from flowrun.diffusion.checkpoint import load_bundle
    from flowrun.diffusion.components import with_ldm_config
    from flowrun.diffusion.precision import slow_bfloat16

    fingerprint, device = ctx.files.fingerprint("ckpt_name"), ctx.device.device
    if note := slow_bfloat16(device, ctx.device.requested_dtype):
        ctx.warn(note)
    path = loading(lambda: ctx.files.path("checkpoints", p.ckpt_name))
    config = loading(lambda: ctx.files.path("configs", p.config_name))
    model, clip, vae = loading(lambda: ctx.models.load(
        ("checkpoint", fingerprint, device, ctx.device.dtype),
        lambda: load_bundle(path, fingerprint, device=device, allow_pickle=ctx.files.allow_pickle,
                            dtype=ctx.device.requested_dtype)))
    return {"model": loading(lambda: with_ldm_config(model, config)), "clip": clip, "vae": vae}


class LoraModelParams(NodeParams):
    lora_name: str = Field(min_length=1, description="LoRA file by name, under loras/ on the model search path.")
    strength_model: float = Field(1.0, ge=-100.0, le=100.0)

    _inside = stays_inside("lora_name", LEAVES_MODELS)


@node("LoraLoaderModelOnly", outputs={"model": ports.MODEL}, category="loaders", files={"lora_name": "loras"})
def lora_loader_model_only(p: LoraModelParams, ctx, *, model: ports.Model) -> ports.Model:
    """Apply a LoRA's UNet part only; its text-encoder weights, if any, are left unused."""
    from flowrun.diffusion.lora import read_lora

    path = loading(lambda: ctx.files.path("loras", p.lora_name))
    unet_patches, _ = loading(lambda: read_lora(path, model.unet, [], p.strength_model, 0.0,
                                                 family=model.family, warn=ctx.warn))
    return model.with_patches(unet_patches)


class HypernetworkParams(NodeParams):
    hypernetwork_name: str = Field(min_length=1, description="A1111 hypernetwork (.pt, read only with "
                                   "--allow-pickle) by name, under hypernetworks/.")
    strength: float = Field(1.0, ge=-10.0, le=10.0)

    _inside = stays_inside("hypernetwork_name", LEAVES_MODELS)


@node("HypernetworkLoader", outputs={"model": ports.MODEL}, category="loaders",
      files={"hypernetwork_name": "hypernetworks"})
def hypernetwork_loader(p: HypernetworkParams, ctx, *, model: ports.Model) -> ports.Model:
    """The model whose attentions' key and value inputs go through the hypernetwork's networks for their
    width, scaled by strength; the model given stays as it was."""
    from flowrun.diffusion.hypernetwork import read_hypernetwork

    path = loading(lambda: ctx.files.path("hypernetworks", p.hypernetwork_name))
    hypernetwork = loading(lambda: read_hypernetwork(path, p.strength, ctx.files.allow_pickle))
    return model.with_attention_patch(hypernetwork)
