"""Helpers shared by the benchmarks: the loaded checkpoint out of flowrun's memory cache, and a plain
diffusers StableDiffusionPipeline built on the very same modules (so both sides run identical weights)."""

from __future__ import annotations


def loaded_bundle(memory):
    """(model, clip, vae) of the checkpoint a flowrun run left in `memory`."""
    bundle = next(v for v in memory.values() if isinstance(v, dict) and "model" in v)
    return bundle["model"], bundle["clip"], bundle["vae"]


def euler_pipeline(model, clip, vae):
    """StableDiffusionPipeline with EulerDiscreteScheduler(timestep_spacing="linspace"): what flowrun's
    euler + normal matches."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from flowrun.diffusion.checkpoint import tokenizer

    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="linspace", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae.model, text_encoder=clip.models[0], tokenizer=tokenizer(), unet=model.unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
