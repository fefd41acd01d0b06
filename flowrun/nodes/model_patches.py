"""Patches people stack on a MODEL: each returns a new model value, so the model it was given (shared by
other nodes and cells) stays as it was, and the patch's settings reach every downstream cache key through
this node's own key: RescaleCFG, FreeU(_V2), PatchModelAddDownscale, ModelSamplingContinuousEDM,
PerturbedAttentionGuidance, SelfAttentionGuidance."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, node


def _unet(model, what: str):
    """The model, when its network is a UNet; a DiT (a family's adapter around a transformer: SD3's, Flux's)
    has none of the blocks `what` patches, so the node stops rather than change nothing."""
    if getattr(model.unet, "transformer", None) is not None:
        raise NodeError(f"input 'model': {what} a UNet's blocks; this {model.family} model is a transformer (DiT) "
                        "without them")
    return model


class RescaleCFGParams(NodeParams):
    multiplier: float = Field(0.7, ge=0.0, le=1.0)


@node("RescaleCFG", outputs={"model": ports.MODEL}, category="advanced/model")
def rescale_cfg(p: RescaleCFGParams, ctx, *, model: ports.Model) -> ports.Model:
    """Guidance rescaled to the conditional prediction's spread (for v-prediction and zero-SNR models,
    whose high cfg otherwise overexposes)."""
    from flowrun.diffusion.cfg_patches import RescaleCFG

    return model.with_cfg_function(RescaleCFG(p.multiplier))


class FreeUParams(NodeParams):
    b1: float = Field(1.1, ge=0.0, le=10.0)
    b2: float = Field(1.2, ge=0.0, le=10.0)
    s1: float = Field(0.9, ge=0.0, le=10.0)
    s2: float = Field(0.2, ge=0.0, le=10.0)


class FreeUV2Params(FreeUParams):
    b1: float = Field(1.3, ge=0.0, le=10.0)
    b2: float = Field(1.4, ge=0.0, le=10.0)


@node("FreeU", outputs={"model": ports.MODEL}, category="model_patches/unet")
def free_u(p: FreeUParams, ctx, *, model: ports.Model) -> ports.Model:
    """FreeU: the UNet's backbone features amplified (b1, b2) and its skip features' low frequencies
    damped (s1, s2) on the way up; b = s = 1 changes nothing."""
    from flowrun.diffusion.unet_patches import FreeU

    return _unet(model, "FreeU patches").with_unet_patch(FreeU(p.b1, p.b2, p.s1, p.s2))


@node("FreeU_V2", outputs={"model": ports.MODEL}, category="model_patches/unet")
def free_u_v2(p: FreeUV2Params, ctx, *, model: ports.Model) -> ports.Model:
    """FreeU, version 2: the backbone amplified in proportion to each pixel's mean activation."""
    from flowrun.diffusion.unet_patches import FreeU

    return _unet(model, "FreeU_V2 patches").with_unet_patch(FreeU(p.b1, p.b2, p.s1, p.s2, v2=True))


ResizeMethod = Literal["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


class PatchModelAddDownscaleParams(NodeParams):
    block_number: int = Field(3, ge=1, le=32)
    downscale_factor: float = Field(2.0, ge=0.1, le=9.0)
    start_percent: float = Field(0.0, ge=0.0, le=1.0)
    end_percent: float = Field(0.35, ge=0.0, le=1.0)
    downscale_after_skip: bool = True
    downscale_method: ResizeMethod = "bicubic"
    upscale_method: ResizeMethod = "bicubic"


@node("PatchModelAddDownscale", outputs={"model": ports.MODEL}, category="model_patches/unet")
def patch_model_add_downscale(p: PatchModelAddDownscaleParams, ctx, *, model: ports.Model) -> ports.Model:
    """Kohya's deep shrink: the UNet works on a downscaled copy of its features after input block
    `block_number` while sampling is between start_percent and end_percent (large images keep a
    coherent layout early on)."""
    from flowrun.diffusion.unet_patches import DeepShrink

    sampling = model.sampling
    return _unet(model, "PatchModelAddDownscale patches").with_unet_patch(DeepShrink(
        p.block_number, p.downscale_factor, sampling.percent_to_sigma(p.start_percent),
        sampling.percent_to_sigma(p.end_percent), p.downscale_after_skip, p.downscale_method, p.upscale_method))


# Playground v2.5's latent statistics per channel (ComfyUI's SDXL_Playground_2_5 latent format)
PLAYGROUND_V25 = ((-1.6574, 1.886, -1.383, 2.5155), (8.4927, 5.9022, 6.5498, 5.2299), 0.5)
EDM_SAMPLING = {"v_prediction": ("v_prediction", 1.0), "edm": ("edm", 0.5), "edm_playground_v2.5": ("edm", 0.5),
                "eps": ("epsilon", 1.0)}


class ModelSamplingContinuousEDMParams(NodeParams):
    sampling: Literal["v_prediction", "edm", "edm_playground_v2.5", "eps"] = "v_prediction"
    sigma_max: float = Field(120.0, ge=0.0, le=1000.0)
    sigma_min: float = Field(0.002, ge=0.0, le=1000.0)


@node("ModelSamplingContinuousEDM", outputs={"model": ports.MODEL}, category="advanced/model")
def model_sampling_continuous_edm(p: ModelSamplingContinuousEDMParams, ctx, *, model: ports.Model) -> ports.Model:
    """The model on a continuous EDM schedule (sigma_min..sigma_max, timestep 0.25 ln sigma), its output
    read as eps, v, or EDM's denoiser (sigma_data 0.5); edm_playground_v2.5 also normalises latents as
    Playground v2.5 expects."""
    import dataclasses

    from flowrun.diffusion.edm import ContinuousEDMSampling
    from flowrun.errors import NodeError

    if not 0 < p.sigma_min < p.sigma_max:
        raise NodeError(f"sigma_min ({p.sigma_min}) must be above 0 and below sigma_max ({p.sigma_max})")
    prediction, sigma_data = EDM_SAMPLING[p.sampling]
    base = getattr(model.sampling, "base", model.sampling)
    sampling = ContinuousEDMSampling(prediction, p.sigma_min, p.sigma_max, sigma_data, base)
    latent_format = PLAYGROUND_V25 if p.sampling == "edm_playground_v2.5" else model.latent_format
    return dataclasses.replace(model, sampling=sampling, latent_format=latent_format)


class PerturbedAttentionGuidanceParams(NodeParams):
    scale: float = Field(3.0, ge=0.0, le=100.0)


@node("PerturbedAttentionGuidance", outputs={"model": ports.MODEL}, category="model_patches/unet")
def perturbed_attention_guidance(p: PerturbedAttentionGuidanceParams, ctx, *, model: ports.Model) -> ports.Model:
    """Perturbed-Attention Guidance: each step also predicts with the middle block's self-attention made
    the identity and steers away from that prediction by `scale` (one extra UNet pass per step)."""
    from flowrun.diffusion.post_cfg import PerturbedAttentionGuidance

    return _unet(model, "PerturbedAttentionGuidance perturbs").with_post_cfg_function(
        PerturbedAttentionGuidance(p.scale))


class SelfAttentionGuidanceParams(NodeParams):
    scale: float = Field(0.5, ge=-2.0, le=5.0)
    blur_sigma: float = Field(2.0, ge=0.0, le=10.0)


@node("SelfAttentionGuidance", outputs={"model": ports.MODEL}, category="_for_testing")
def self_attention_guidance(p: SelfAttentionGuidanceParams, ctx, *, model: ports.Model) -> ports.Model:
    """Self-Attention Guidance: the unconditional prediction blurred (blur_sigma) where the middle block
    attends most, predicted again, and the result steered away from that by `scale` (the negative
    prompt runs even at cfg 1)."""
    from flowrun.diffusion.post_cfg import RecordMiddleAttention, SelfAttentionGuidance

    return _unet(model, "SelfAttentionGuidance reads").with_unet_patch(RecordMiddleAttention()).with_post_cfg_function(
        SelfAttentionGuidance(p.scale, p.blur_sigma))
