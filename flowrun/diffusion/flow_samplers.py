"""The ancestral samplers' rectified-flow forms, which ComfyUI runs instead of the variance-exploding ones for
a model with flow sampling (x = sigma * noise + (1 - sigma) * latent): the step goes down to sigma_down and
the latent is then rescaled by alpha_next / alpha_down before fresh noise is added, so that the result has
the flow's mix of latent and noise at sigma_next (ComfyUI's sample_euler_ancestral_RF,
sample_dpm_2_ancestral_RF, sample_dpmpp_2s_ancestral_RF). Also the half-log-SNR of a flow sigma,
log((1 - sigma) / sigma), which the DPM-Solver++ SDE samplers step in.
"""

from __future__ import annotations

from typing import Callable

import torch

from flowrun.diffusion.noise import SeedNoise

# samplers.py picks these for flow models, so the few helpers they share are written here again
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int], None]


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma.view(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def _ones(x):
    return x.new_ones([x.shape[0]])


def rf_step(sigma, sigma_next, eta: float):
    """(sigma_down, alpha_next / alpha_down, renoise coefficient) of one ancestral step of a flow."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """log(alpha / sigma) of a flow: log((1 - sigma) / sigma)."""
    return sigma.logit().neg()


def sigma_of_half_log_snr(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().sigmoid()


def sample_euler_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                           s_noise: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            down, ratio, renoise = rf_step(sigmas[i], sigmas[i + 1], eta)
            x = (down / sigmas[i]) * x + (1 - down / sigmas[i]) * denoised
            if eta > 0:
                x = ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        callback(i)
    return x


def sample_dpm_2_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                           s_noise: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        down, ratio, renoise = rf_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i] * s_in, denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x2 = x + d * (mid - sigmas[i])
            d2 = to_d(x2, mid * s_in, model(x2, mid * s_in))
            x = x + d2 * (down - sigmas[i])
            x = ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        callback(i)
    return x


def sample_dpmpp_2s_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                              s_noise: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        down, ratio, renoise = rf_step(sigmas[i], sigmas[i + 1], eta)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i] * s_in, denoised) * (down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = torch.tensor(0.9999, dtype=sigmas.dtype, device=sigmas.device)  # logit(1) is infinite
            else:
                t, t_down = half_log_snr(sigmas[i]), half_log_snr(down)
                sigma_s = sigma_of_half_log_snr(t + (t_down - t) / 2)
            u = (sigma_s / sigmas[i]) * x + (1 - sigma_s / sigmas[i]) * denoised
            mid = model(u, sigma_s * s_in)
            x = (down / sigmas[i]) * x + (1 - down / sigmas[i]) * mid
        if sigmas[i + 1] > 0 and eta > 0:
            x = ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        callback(i)
    return x
