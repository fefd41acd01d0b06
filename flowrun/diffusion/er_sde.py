"""ER-SDE-Solver-3 (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDEs for
diffusion models", arXiv 2309.06169), the variance-preserving form ComfyUI runs as `er_sde`.

It steps in er_lambda = sigma / alpha (sigma itself for variance-exploding sigmas, sigma / (1 - sigma) for
a rectified flow, through `Snr`; a flow's first sigma of 1 moves to the sigma at 0.01 %), with the noise
scale function x (e^(x^0.3) + 10); stages two and three add the first and second divided differences of
the prediction with integrals of that function taken as 200-point Riemann sums, as ComfyUI's.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, Snr, _ones

INTEGRATION_POINTS = 200.0


def noise_scaler(x):
    return x * ((x ** 0.3).exp() + 10.0)


def sample_er_sde(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, s_noise: float = 1.0,
                  max_stage: int = 3, snr: Snr | None = None):
    snr = snr or Snr()
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    points = torch.arange(0, INTEGRATION_POINTS, dtype=torch.float32, device=x.device)
    sigmas = snr.offset_first(sigmas)
    er_lambdas = snr.lam(sigmas).neg().exp()
    old_denoised, old_denoised_d = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s, alpha_t = sigmas[i] / lam_s, sigmas[i + 1] / lam_t
            r = noise_scaler(lam_t) / noise_scaler(lam_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / INTEGRATION_POINTS
                where = lam_t + points * step
                scaled = noise_scaler(where)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * noise_scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((where - lam_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * noise_scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                spread = (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * spread
        old_denoised = denoised
        callback(i)
    return x
