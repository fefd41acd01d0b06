"""KSampler: noise from the seed, sigmas from the scheduler, a sampler walking them under guidance.

Conventions (ComfyUI's): LATENT holds the VAE's unscaled latent; it is multiplied by the model's latent
scale before sampling (unless all zeros) and divided after. The initial noise is
`torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` for the whole batch, made on
the CPU so that a seed means the same image on any device, then scaled by sqrt(1 + sigma_max^2) at full
denoise or added as noise * sigma to the latent when denoise < 1.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flowrun.diffusion import guidance, samplers, schedules
from flowrun.diffusion.lora import patched
from flowrun.diffusion.model import DiffusionModel


def initial_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.shape, dtype=torch.float32, generator=generator)
    # as ComfyUI: noise for index i is the i-th draw, so a batch slice keeps its images' noise
    wanted = sorted(set(batch_index))
    draws, out = {}, []
    for i in range(wanted[-1] + 1):
        noise = torch.randn([1] + list(latent.shape[1:]), dtype=torch.float32, generator=generator)
        if i in wanted:
            draws[i] = noise
    out = [draws[i] for i in batch_index]
    return torch.cat(out)


def ksample(model: DiffusionModel, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive: list, negative: list, latent: dict[str, Any], denoise: float = 1.0, add_noise: bool = True,
            start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    latent_image = latent["samples"].float()
    noise = initial_noise(latent_image, seed, latent.get("batch_index")) if add_noise else torch.zeros_like(latent_image)
    sigmas = schedules.sampler_sigmas(model.sampling, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return {**latent, "samples": latent_image.clone()}
    if len(sigmas) == 0:
        return {**latent, "samples": latent_image.clone()}

    device = torch.device(model.device)
    scale = model.latent_scale
    start = latent_image * scale if torch.count_nonzero(latent_image) > 0 else latent_image
    start, noise, sigmas = start.to(device), noise.to(device), sigmas.to(device)
    pos = guidance.prepare(model, positive, start, True)
    neg = guidance.prepare(model, negative, start, False)
    x = model.sampling.noise_scaling(sigmas[0], noise, start, model.sampling.is_max_denoise(sigmas))
    total = len(sigmas) - 1
    step = (lambda i: progress(i + 1, total)) if progress else (lambda i: None)
    with torch.no_grad(), patched(model.unet, model.patches):
        out = samplers.get(sampler_name)(guidance.denoiser(model, pos, neg, cfg), x, sigmas, seed, step)
    return {**latent, "samples": (out / scale).float().cpu()}
