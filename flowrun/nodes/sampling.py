"""KSampler and KSamplerAdvanced, with ComfyUI's fields, ranges, sampler and scheduler names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flowrun.diffusion.names import SAMPLERS, SCHEDULERS
from flowrun.nodes import ports
from flowrun.nodes.registry import NodeParams, node

SamplerName = Literal[SAMPLERS]  # type: ignore[valid-type]
SchedulerName = Literal[SCHEDULERS]  # type: ignore[valid-type]
SEED_MAX = 2**64 - 1

SAMPLER_INPUTS = {"model": ports.MODEL, "positive": ports.CONDITIONING, "negative": ports.CONDITIONING,
                  "latent_image": ports.LATENT}


class KSamplerParams(NodeParams):
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Initial noise: torch.randn on the CPU from this seed.")
    steps: int = Field(20, ge=1, le=10000)
    cfg: float = Field(8.0, ge=0.0, le=100.0)
    sampler_name: SamplerName = "euler"
    scheduler: SchedulerName = "normal"
    denoise: float = Field(1.0, ge=0.0, le=1.0)


def _run(ctx, model, **kwargs):
    from flowrun.diffusion.ksampler import ksample
    from flowrun.errors import NodeError

    try:
        return ksample(model, progress=ctx.progress, **kwargs)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


def _batch(seed_field: str, advanced: bool):
    def run_batch(params: list, ctx, *, model, positive, negative, latent_image) -> list:
        from flowrun.diffusion.ksampler import ksample_batch
        from flowrun.errors import NodeError

        p = params[0]
        extra = {"denoise": p.denoise} if not advanced else {
            "add_noise": p.add_noise == "enable", "start_step": p.start_at_step, "last_step": p.end_at_step,
            "force_full_denoise": p.return_with_leftover_noise == "disable"}
        try:
            return ksample_batch(model, seeds=[getattr(q, seed_field) for q in params], cfgs=[q.cfg for q in params],
                                 steps=p.steps, sampler_name=p.sampler_name, scheduler=p.scheduler, positive=positive,
                                 negative=negative, latent=latent_image, progress=ctx.progress, **extra)
        except ValueError as exc:
            raise NodeError(str(exc)) from None

    return run_batch


@node("KSampler", params=KSamplerParams, inputs=SAMPLER_INPUTS, outputs={"latent": ports.LATENT}, category="sampling",
      batch=_batch("seed", advanced=False), batch_fields=("seed", "cfg"))
def ksampler(p: KSamplerParams, ctx, *, model, positive, negative, latent_image):
    """Denoise latent_image from the seed's noise; the same inputs always give the same latent."""
    return _run(ctx, model, seed=p.seed, steps=p.steps, cfg=p.cfg, sampler_name=p.sampler_name,
                scheduler=p.scheduler, positive=positive, negative=negative, latent=latent_image, denoise=p.denoise)


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


@node("KSamplerAdvanced", params=KSamplerAdvancedParams, inputs=SAMPLER_INPUTS, outputs={"latent": ports.LATENT},
      category="sampling", batch=_batch("noise_seed", advanced=True), batch_fields=("noise_seed", "cfg"))
def ksampler_advanced(p: KSamplerAdvancedParams, ctx, *, model, positive, negative, latent_image):
    """Run steps start_at_step..end_at_step of a schedule; with leftover noise for a second sampler."""
    return _run(ctx, model, seed=p.noise_seed, steps=p.steps, cfg=p.cfg, sampler_name=p.sampler_name,
                scheduler=p.scheduler, positive=positive, negative=negative, latent=latent_image,
                add_noise=p.add_noise == "enable", start_step=p.start_at_step, last_step=p.end_at_step,
                force_full_denoise=p.return_with_leftover_noise == "disable")
