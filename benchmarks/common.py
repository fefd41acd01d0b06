"""Helpers shared by the benchmarks: the loaded checkpoint out of flowrun's memory cache, a plain
diffusers StableDiffusionPipeline built on the very same modules (so both sides run identical weights),
and the peak memory of a whole child process."""

from __future__ import annotations

import os
import subprocess


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


def peak_rss_kib(cmd: list[str], env: dict | None = None) -> int:
    """Run `cmd` to its end and return its peak resident memory (KiB), read by the parent from the child's
    own resource usage (os.wait4), so it holds however the child leaves (flowrun's CLI ends with os._exit)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=stderr)
    return usage.ru_maxrss
