"""KSampler and KSamplerAdvanced, with ComfyUI's fields, ranges, sampler and scheduler names.

Both batch: cells that differ only in seed and cfg sample in one call, each cell's rows with their own
seed's noise and their own guidance scale. The functions are written once, in list form; a single cell
is a list of one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.diffusion.names import SAMPLERS, SCHEDULERS
from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import SEED_MAX
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Conditioning, Latent

SamplerName = Literal[SAMPLERS]  # type: ignore[valid-type]
SchedulerName = Literal[SCHEDULERS]  # type: ignore[valid-type]


class KSamplerParams(NodeParams):
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Initial noise: torch.randn on the CPU from this seed.")
    steps: int = Field(20, ge=1, le=10000)
    cfg: float = Field(8.0, ge=0.0, le=100.0)
    sampler_name: SamplerName = "euler"
    scheduler: SchedulerName = "normal"
    denoise: float = Field(1.0, ge=0.0, le=1.0)


def _sample(ctx, seeds: list[int], cfgs: list[float], p, model, positive, negative, latent, **options) -> list[Latent]:
    from flowrun.diffusion.ksampler import ksample_batch

    try:
        return ksample_batch(model, noise=ctx.noise(seeds), cfgs=cfgs, steps=p.steps, sampler_name=p.sampler_name,
                             scheduler=p.scheduler, positive=positive, negative=negative, latent=latent,
                             progress=ctx.progress, preview=ctx.preview, **options)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


@node("KSampler", outputs={"latent": ports.LATENT}, category="sampling", batch=("seed", "cfg"))
def ksampler(ps: list[KSamplerParams], ctx, *, model: ports.Model, positive: Conditioning, negative: Conditioning,
             latent_image: Latent) -> list[Latent]:
    """Denoise latent_image from the seed's noise; the same inputs always give the same latent."""
    p = ps[0]
    return _sample(ctx, [q.seed for q in ps], [q.cfg for q in ps], p, model, positive, negative, latent_image,
                   denoise=p.denoise)


class KSamplerAdvancedParams(NodeParams):
    add_noise: Literal["enable", "disable"] = "enable"
    noise_seed: int = Field(0, ge=0, le=SEED_MAX)
    steps: int = Field(20, ge=1, le=10000)
    cfg: float = Field(8.0, ge=0.0, le=100.0)
    sampler_name: SamplerName = "euler"
    scheduler: SchedulerName = "normal"
    start_at_step: int = Field(0, ge=0, le=10000)
    end_at_step: int = Field(10000, ge=0, le=10000)
    return_with_leftover_noise: Literal["disable", "enable"] = "disable"


@node("KSamplerAdvanced", outputs={"latent": ports.LATENT}, category="sampling", batch=("noise_seed", "cfg"))
def ksampler_advanced(ps: list[KSamplerAdvancedParams], ctx, *, model: ports.Model, positive: Conditioning,
                      negative: Conditioning, latent_image: Latent) -> list[Latent]:
    """Run steps start_at_step..end_at_step of a schedule; with leftover noise for a second sampler."""
    p = ps[0]
    return _sample(ctx, [q.noise_seed for q in ps], [q.cfg for q in ps], p, model, positive, negative, latent_image,
                   add_noise=p.add_noise == "enable", start_step=p.start_at_step, last_step=p.end_at_step,
                   force_full_denoise=p.return_with_leftover_noise == "disable")
