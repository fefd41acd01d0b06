"""Two one-step samplers ComfyUI added to k-diffusion's: `ddpm`, the ancestral step of Ho et al. 2020
taken in the variance-preserving space x / sqrt(1 + sigma^2), and `heunpp2`, Heun's method with a third
evaluation and weights that lean on the look-ahead derivatives in proportion to their sigma.

Neither has a flow form in ComfyUI: a rectified-flow model runs the same update (its last step still lands
on the prediction).
"""

from __future__ import annotations

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, _ones, to_d


def sample_ddpm(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in)
        eps = (x - denoised) / sigma
        alpha_cumprod = 1 / (sigma * sigma + 1)
        alpha_cumprod_prev = 1 / (sigma_prev * sigma_prev + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        # the posterior mean of the previous VP latent, plus its standard deviation of fresh noise
        x = (1.0 / alpha).sqrt() * (x / torch.sqrt(1.0 + sigma ** 2.0) - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            x = x + ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise(sigma, sigma_prev)
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev ** 2.0)
        callback(i)
    return x


def sample_heunpp2(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    """Euler into the last sigma, Heun (weights 1 - w, w with w = sigma_next / 2 sigma_0) into the one
    before, and otherwise three derivatives weighted by sigma_next / 3 sigma_0 and sigma_after / 3 sigma_0."""
    s_in = _ones(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1], model(x2, sigmas[i + 1] * s_in))
            if sigmas[i + 2] == s_end:
                w2 = sigmas[i + 1] / (2 * sigmas[0])
                x = x + (d * (1 - w2) + d2 * w2) * dt
            else:
                x3 = x2 + d2 * (sigmas[i + 2] - sigmas[i + 1])
                d3 = to_d(x3, sigmas[i + 2], model(x3, sigmas[i + 2] * s_in))
                w = 3 * sigmas[0]
                w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
                x = x + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
        callback(i)
    return x
