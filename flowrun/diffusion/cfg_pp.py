"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"), as ComfyUI
runs them: the step follows the guided prediction, but the direction back to noise is taken from the
unconditional one. ComfyUI hands the unconditional prediction to the sampler through a post-cfg function
(with the cfg-1 shortcut turned off, so the negative prompt is run even at cfg 1); here the guided
denoiser writes it into an `UncondSink` the sampler reads after each model call (ksampler.sample).

euler_cfg_pp and euler_ancestral_cfg_pp scale by alpha of the model's sampling (1 for variance-exploding
sigmas, 1 - sigma for a rectified flow, through `Snr`); dpmpp_2s_ancestral_cfg_pp has a flow form as
the plain sampler does; dpmpp_2m_cfg_pp steps in -log(sigma) for every model, as ComfyUI's does.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.flow_samplers import half_log_snr, rf_step, sigma_of_half_log_snr
from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, Snr, _ones, ancestral_step, to_d


class UncondSink:
    """Where the guided denoiser leaves the unconditional prediction of its latest call."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("a CFG++ sampler ran over a denoiser that gives no unconditional prediction")
        return self.value


def sample_euler_ancestral_cfg_pp(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *,
                                  uncond: UncondSink, eta: float = 1.0, s_noise: float = 1.0,
                                  snr: Snr | None = None):
    snr = snr or Snr()
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            alpha_s = sigmas[i] * snr.lam(sigmas[i]).exp()
            alpha_t = sigmas[i + 1] * snr.lam(sigmas[i + 1]).exp()
            d = to_d(x, sigmas[i], alpha_s * uncond.take())
            down, up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
            x = alpha_t * denoised + (alpha_t * down) * d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        callback(i)
    return x


def sample_euler_cfg_pp(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *,
                        uncond: UncondSink, snr: Snr | None = None):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, seed_noise, callback, uncond=uncond, eta=0.0,
                                         s_noise=0.0, snr=snr)


def sample_dpmpp_2m_cfg_pp(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *,
                           uncond: UncondSink):
    s_in = _ones(x)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        now = uncond.take()
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * now
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = -torch.exp(-h) * now - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = now
        callback(i)
    return x


def sample_dpmpp_2s_ancestral_cfg_pp(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *,
                                     uncond: UncondSink, eta: float = 1.0, s_noise: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        now = uncond.take()
        guidance = denoised - now
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + to_d(x, sigmas[i], now) * (down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), down.log().neg()
            h = t_next - t
            s = t + h / 2
            x2 = ((-s).exp() / (-t).exp()) * x - (-h / 2).expm1() * now
            model(x2, (-s).exp() * s_in)
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * uncond.take()
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        x = x + guidance
        callback(i)
    return x


def sample_dpmpp_2s_ancestral_cfg_pp_flow(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, *,
                                          uncond: UncondSink, eta: float = 1.0, s_noise: float = 1.0):
    """The rectified-flow form: flow ancestral steps (flow_samplers.rf_step), the midpoint in log-SNR, and
    the guidance added back scaled by alpha_next = 1 - sigma_next."""
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        now = uncond.take()
        guidance = denoised - now
        down, ratio, renoise = rf_step(sigmas[i], sigmas[i + 1], eta)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], now) * (down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = torch.tensor(0.9999, dtype=sigmas.dtype, device=sigmas.device)  # logit(1) is infinite
            else:
                t, t_down = half_log_snr(sigmas[i]), half_log_snr(down)
                sigma_s = sigma_of_half_log_snr(t + (t_down - t) / 2)
            model((sigma_s / sigmas[i]) * x + (1 - sigma_s / sigmas[i]) * now, sigma_s * s_in)
            x = (down / sigmas[i]) * x + (1 - down / sigmas[i]) * uncond.take()
        if sigmas[i + 1] > 0 and eta > 0:
            x = ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        x = x + (1 - sigmas[i + 1]) * guidance
        callback(i)
    return x
