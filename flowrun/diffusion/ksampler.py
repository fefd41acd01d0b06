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
    return ksample_batch(model, seeds=[seed], cfgs=[cfg], steps=steps, sampler_name=sampler_name,
                         scheduler=scheduler, positive=positive, negative=negative, latent=latent, denoise=denoise,
                         add_noise=add_noise, start_step=start_step, last_step=last_step,
                         force_full_denoise=force_full_denoise, progress=progress)[0]


def ksample_batch(model: DiffusionModel, *, seeds: list[int], cfgs: list[float], steps: int, sampler_name: str,
                  scheduler: str, positive: list, negative: list, latent: dict[str, Any], denoise: float = 1.0,
                  add_noise: bool = True, start_step: int | None = None, last_step: int | None = None,
                  force_full_denoise: bool = False, progress: Callable[[int, int], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Several cells that share everything but seed and cfg, in one batched sampler call: each cell's
    rows get their own seed's initial and per-step noise and their own guidance scale, so a cell renders
    as it would alone (up to float rounding of the batched forward passes)."""
    latent_image = latent["samples"].float()
    rows = latent_image.shape[0]
    if add_noise:
        noise = torch.cat([initial_noise(latent_image, s, latent.get("batch_index")) for s in seeds])
    else:
        noise = torch.zeros((rows * len(seeds),) + tuple(latent_image.shape[1:]))
    sigmas = schedules.sampler_sigmas(model.sampling, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if (start_step is not None and start_step >= len(sigmas) - 1) or len(sigmas) == 0:
        return [{**latent, "samples": latent_image.clone()} for _ in seeds]
    if start_step is not None:
        sigmas = sigmas[start_step:]

    device = torch.device(model.device)
    scale = model.latent_scale
    start = latent_image * scale if torch.count_nonzero(latent_image) > 0 else latent_image
    start = torch.cat([start] * len(seeds)).to(device)
    noise, sigmas = noise.to(device), sigmas.to(device)
    pos = guidance.prepare(model, positive, start, True)
    neg = guidance.prepare(model, negative, start, False)
    x = model.sampling.noise_scaling(sigmas[0], noise, start, model.sampling.is_max_denoise(sigmas))
    total = len(sigmas) - 1
    step = (lambda i: progress(i + 1, total)) if progress else (lambda i: None)
    cfg = cfgs[0] if len(set(cfgs)) == 1 else [c for c in cfgs for _ in range(rows)]
    seed = seeds[0] if len(seeds) == 1 else [(s, rows) for s in seeds]
    with torch.no_grad(), patched(model.unet, model.patches):
        out = samplers.get(sampler_name)(guidance.denoiser(model, pos, neg, cfg), x, sigmas, seed, step)
    out = (out / scale).float().cpu()
    return [{**latent, "samples": out[i * rows:(i + 1) * rows]} for i in range(len(seeds))]
