"""Two samplers that reuse the previous step's prediction, as ComfyUI runs them, each with a CFG++ form
(the step renoises along the unconditional prediction, cfg_pp.UncondSink):

- `res_multistep`: the second-order multistep exponential integrator of RES (Zhang et al. 2023, "Improved
  order analysis and design of exponential integrator for diffusion models", arXiv 2308.02157), in
  -log(sigma) for every model as ComfyUI's; its ancestral forms take variance-exploding ancestral steps.
- `gradient_estimation`: Euler with the change of the derivative extrapolated by ge_gamma (Permenter &
  Yuan 2024, "Interpreting and improving diffusion models from an optimization perspective").
"""

from __future__ import annotations

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, _ones, ancestral_step, to_d


def _phi1(t):
    return torch.expm1(t) / t


def _phi2(t):
    return (_phi1(t) - 1.0) / t


def res_multistep(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *, eta: float,
                  s_noise: float = 1.0, uncond=None):
    """`uncond`: a CFG++ run's UncondSink, or None."""
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    old_sigma_down, old_denoised = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        now = uncond.take() if uncond is not None else None
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0 or old_denoised is None:
            if uncond is not None:
                x = denoised + to_d(x, sigmas[i], now) * down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_old = sigmas[i].log().neg(), old_sigma_down.log().neg()
            t_next, t_prev = down.log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if uncond is not None:
                x = x + (denoised - now)
                x = (-h).exp() * x + h * (b1 * now + b2 * old_denoised)
            else:
                x = (-h).exp() * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        old_denoised = now if uncond is not None else denoised
        old_sigma_down = down
        callback(i)
    return x


def sample_res_multistep(model, x, sigmas, seed_noise, callback, s_noise: float = 1.0):
    return res_multistep(model, x, sigmas, seed_noise, callback, eta=0.0, s_noise=s_noise)


def sample_res_multistep_cfg_pp(model, x, sigmas, seed_noise, callback, *, uncond, s_noise: float = 1.0):
    return res_multistep(model, x, sigmas, seed_noise, callback, eta=0.0, s_noise=s_noise, uncond=uncond)


def sample_res_multistep_ancestral(model, x, sigmas, seed_noise, callback, eta: float = 1.0, s_noise: float = 1.0):
    return res_multistep(model, x, sigmas, seed_noise, callback, eta=eta, s_noise=s_noise)


def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, seed_noise, callback, *, uncond, eta: float = 1.0,
                                          s_noise: float = 1.0):
    return res_multistep(model, x, sigmas, seed_noise, callback, eta=eta, s_noise=s_noise, uncond=uncond)


def sample_gradient_estimation(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback,
                               ge_gamma: float = 2.0, uncond=None):
    s_in = _ones(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], uncond.take() if uncond is not None else denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if uncond is not None else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
        callback(i)
    return x


def sample_gradient_estimation_cfg_pp(model, x, sigmas, seed_noise, callback, *, uncond, ge_gamma: float = 2.0):
    return sample_gradient_estimation(model, x, sigmas, seed_noise, callback, ge_gamma=ge_gamma, uncond=uncond)
