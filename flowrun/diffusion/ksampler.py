"""KSampler: noise from the seed, sigmas from the scheduler, a sampler walking them under guidance.

Conventions (ComfyUI's): LATENT holds the VAE's unscaled latent; it is multiplied by the model's latent
scale before sampling (unless all zeros) and divided after. The initial noise (flowrun.diffusion.noise:
CPU randn of the seed) is scaled by sqrt(1 + sigma_max^2) at full denoise or added as noise * sigma to
the latent when denoise < 1.
"""

from __future__ import annotations

from typing import Callable

import torch

from flowrun.diffusion import guidance, samplers, schedules
from flowrun.diffusion.lora import patched
from flowrun.diffusion.model import DiffusionModel
from flowrun.diffusion.noise import SeedNoise
from flowrun.values import Conditioning, Latent


def ksample(model: DiffusionModel, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive: Conditioning, negative: Conditioning, latent: Latent, denoise: float = 1.0,
            add_noise: bool = True, start_step: int | None = None, last_step: int | None = None,
            force_full_denoise: bool = False, progress: Callable[[int, int], None] | None = None) -> Latent:
    """One cell: `ksample_batch` with a single seed."""
    return ksample_batch(model, noise=SeedNoise([seed]), cfgs=[cfg], steps=steps, sampler_name=sampler_name,
                         scheduler=scheduler, positive=positive, negative=negative, latent=latent, denoise=denoise,
                         add_noise=add_noise, start_step=start_step, last_step=last_step,
                         force_full_denoise=force_full_denoise, progress=progress)[0]


def ksample_batch(model: DiffusionModel, *, noise: SeedNoise, cfgs: list[float], steps: int, sampler_name: str,
                  scheduler: str, positive: Conditioning, negative: Conditioning, latent: Latent,
                  denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
                  last_step: int | None = None, force_full_denoise: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> list[Latent]:
    """Several cells that share everything but seed and cfg, in one batched sampler call: each cell's
    rows get their own seed's initial and per-step noise and their own guidance scale, so a cell renders
    as it would alone (up to float rounding of the batched forward passes)."""
    seeds = noise.seeds
    latent_image = latent.samples.float()
    wanted = model.unet.config.out_channels
    if latent_image.shape[1] != wanted:
        raise ValueError(f"input 'latent_image': the model denoises latents of {wanted} channels, this one has "
                         f"{latent_image.shape[1]} (made by a VAE of another model family?)")
    rows = latent_image.shape[0]
    if add_noise:
        start_noise = noise.initial(latent_image, latent.batch_index)
    else:
        start_noise = torch.zeros((rows * len(seeds),) + tuple(latent_image.shape[1:]))
    sigmas = schedules.sampler_sigmas(model.sampling, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if (start_step is not None and start_step >= len(sigmas) - 1) or len(sigmas) == 0:
        return [latent.replace(samples=latent_image.clone()) for _ in seeds]
    if start_step is not None:
        sigmas = sigmas[start_step:]

    device = torch.device(model.device)
    scale = model.latent_scale
    start = latent_image * scale if torch.count_nonzero(latent_image) > 0 else latent_image
    start = torch.cat([start] * len(seeds)).to(device)
    start_noise, sigmas = start_noise.to(device), sigmas.to(device)
    pos = guidance.prepare(model, positive, start, True)
    neg = guidance.prepare(model, negative, start, False)
    x = model.sampling.noise_scaling(sigmas[0], start_noise, start, model.sampling.is_max_denoise(sigmas))
    total = len(sigmas) - 1
    step = (lambda i: progress(i + 1, total)) if progress else (lambda i: None)
    cfg = cfgs[0] if len(set(cfgs)) == 1 else [c for c in cfgs for _ in range(rows)]
    with torch.no_grad(), patched(model.unet, model.patches):
        out = samplers.get(sampler_name)(guidance.denoiser(model, pos, neg, cfg), x, sigmas, noise, step)
    out = (out / scale).float().cpu()
    return [latent.replace(samples=out[i * rows:(i + 1) * rows]) for i in range(len(seeds))]
