"""Nodes for rectified-flow models (SD3, AuraFlow, Flux): ModelSamplingSD3, ModelSamplingAuraFlow and
ModelSamplingFlux put a model on a shifted flow schedule (flowrun.diffusion.flow_sampling), as ComfyUI's
nodes of the same names; EmptySD3LatentImage makes the 16-channel latents of SD3's autoencoder."""

from __future__ import annotations

from pydantic import Field

from flowrun.nodes import ports
from flowrun.nodes.fields import MAX_RESOLUTION
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Latent


def _with_sampling(model, make):
    """A new model value on the schedule `make(base)` gives, `base` being the discrete schedule the model
    goes back to under ModelSamplingDiscrete."""
    import dataclasses

    return dataclasses.replace(model, sampling=make(getattr(model.sampling, "base", model.sampling)))


class ModelSamplingSD3Params(NodeParams):
    shift: float = Field(3.0, ge=0.0, le=100.0)


@node("ModelSamplingSD3", outputs={"model": ports.MODEL}, category="advanced/model")
def model_sampling_sd3(p: ModelSamplingSD3Params, ctx, *, model: ports.Model) -> ports.Model:
    """The model on SD3's flow schedule with `shift` (sigma = shift t / (1 + (shift - 1) t), timestep
    1000 sigma), its output read as the flow's velocity."""
    from flowrun.diffusion.flow_sampling import FlowSampling

    return _with_sampling(model, lambda base: FlowSampling(p.shift, multiplier=1000.0, base=base))


class ModelSamplingAuraFlowParams(NodeParams):
    shift: float = Field(1.73, ge=0.0, le=100.0)


@node("ModelSamplingAuraFlow", outputs={"model": ports.MODEL}, category="advanced/model")
def model_sampling_aura_flow(p: ModelSamplingAuraFlowParams, ctx, *, model: ports.Model) -> ports.Model:
    """As ModelSamplingSD3, with the timestep sigma itself (AuraFlow's multiplier 1)."""
    from flowrun.diffusion.flow_sampling import FlowSampling

    return _with_sampling(model, lambda base: FlowSampling(p.shift, multiplier=1.0, base=base))


class ModelSamplingFluxParams(NodeParams):
    max_shift: float = Field(1.15, ge=0.0, le=100.0)
    base_shift: float = Field(0.5, ge=0.0, le=100.0)
    width: int = Field(1024, ge=16, le=MAX_RESOLUTION, multiple_of=8)
    height: int = Field(1024, ge=16, le=MAX_RESOLUTION, multiple_of=8)


@node("ModelSamplingFlux", outputs={"model": ports.MODEL}, category="advanced/model")
def model_sampling_flux(p: ModelSamplingFluxParams, ctx, *, model: ports.Model) -> ports.Model:
    """The model on Flux's schedule, its shift chosen from the image size: base_shift at 256x256, max_shift
    at 1024x1024, linear in the pixel count between and beyond."""
    from flowrun.diffusion.flow_sampling import FluxSampling, flux_shift

    mu = flux_shift(p.max_shift, p.base_shift, p.width, p.height)
    return _with_sampling(model, lambda base: FluxSampling(mu, base=base))


class EmptySD3LatentParams(NodeParams):
    width: int = Field(1024, ge=16, le=MAX_RESOLUTION, multiple_of=16)
    height: int = Field(1024, ge=16, le=MAX_RESOLUTION, multiple_of=16)
    batch_size: int = Field(1, ge=1, le=4096)


@node("EmptySD3LatentImage", outputs={"latent": ports.LATENT}, category="latent/sd3")
def empty_sd3_latent_image(p: EmptySD3LatentParams, ctx) -> Latent:
    """A batch of zero latents of SD3's 16-channel autoencoder for an image of width x height."""
    import torch

    return Latent(torch.zeros([p.batch_size, 16, p.height // 8, p.width // 8]))
