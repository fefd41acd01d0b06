"""SEEDS (Gonzalez et al. 2023, "SEEDS: Exponential SDE solvers for fast high-quality sampling from diffusion
models", arXiv 2305.14267), the data-prediction stage-2 and stage-3 solvers as ComfyUI runs them, and
ComfyUI's exponential Heun samplers built on stage 2 (`exp_heun_2_x0`: r = 1 with the phi_2 rule, no
noise; `exp_heun_2_x0_sde`: the same with noise).

They step in the half-log-SNR lambda = log(alpha / sigma) of the model's sampling (`Snr`: a flow's first
sigma of 1 moves to the sigma at 0.01 %), at intermediate points lerp(lambda_s, lambda_t, r); with eta > 0
the noise of the sub-steps is chained so the step's total noise is that of one SDE step.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, Snr, _ones


def _h_phi_1(h):
    return torch.expm1(h)


def _h_phi_2(h):
    return (torch.expm1(h) - h) / h


def _first_stage(x, denoised, sigma, sigma_1, alpha_1, r, h, eta, h_eta, noise, s_noise, inject):
    """The step from sigma to the first intermediate point (lambda at the fraction r of the step) and, with
    noise injected, the noise it added (else None)."""
    x_1 = sigma_1 / sigma * (-r * h * eta).exp() * x - alpha_1 * _h_phi_1(-r * h_eta) * denoised
    if not inject:
        return x_1, None
    sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigma, sigma_1)
    return x_1 + sde_noise * sigma_1 * s_noise, sde_noise


def _chained(sde_noise, segment, fresh):
    """The noise so far carried over one more segment of the step (decayed by exp(segment)), plus the fresh
    noise that segment adds, so that the step's total is one SDE step's."""
    return sde_noise * segment.exp() + segment.mul(2).expm1().neg().sqrt() * fresh


def sample_seeds_2(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                   s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1", snr: Snr | None = None):
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"unknown solver_type {solver_type!r}; known: phi_1, phi_2")
    snr = snr or Snr()
    noise = seed_noise.gaussian(x)
    inject = eta > 0 and s_noise > 0
    sigmas = snr.offset_first(sigmas)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
            callback(i)
            continue
        lam_s, lam_t = snr.lam(sigmas[i]), snr.lam(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = snr.sigma(lam_1)
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x2, sde_noise = _first_stage(x, denoised, sigmas[i], sigma_1, alpha_1, r, h, eta, h_eta, noise, s_noise,
                                     inject)
        denoised_2 = model(x2, sigma_1 * s_in)
        decay = sigmas[i + 1] / sigmas[i] * (-h * eta).exp()
        if solver_type == "phi_1":
            x = decay * x - alpha_t * _h_phi_1(-h_eta) * torch.lerp(denoised, denoised_2, 1 / (2 * r))
        else:
            b2 = _h_phi_2(-h_eta) / r
            b1 = _h_phi_1(-h_eta) - b2
            x = decay * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            sde_noise = _chained(sde_noise, (r - 1) * h * eta, noise(sigma_1, sigmas[i + 1]))
            x = x + sde_noise * sigmas[i + 1] * s_noise
        callback(i)
    return x


def sample_exp_heun_2_x0(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback,
                         solver_type: str = "phi_2", snr: Snr | None = None):
    return sample_seeds_2(model, x, sigmas, seed_noise, callback, eta=0.0, s_noise=0.0, r=1.0,
                          solver_type=solver_type, snr=snr)


def sample_exp_heun_2_x0_sde(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback,
                             eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "phi_2",
                             snr: Snr | None = None):
    return sample_seeds_2(model, x, sigmas, seed_noise, callback, eta=eta, s_noise=s_noise, r=1.0,
                          solver_type=solver_type, snr=snr)


def sample_seeds_3(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                   s_noise: float = 1.0, r_1: float = 1.0 / 3, r_2: float = 2.0 / 3, snr: Snr | None = None):
    snr = snr or Snr()
    noise = seed_noise.gaussian(x)
    inject = eta > 0 and s_noise > 0
    sigmas = snr.offset_first(sigmas)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
            callback(i)
            continue
        lam_s, lam_t = snr.lam(sigmas[i]), snr.lam(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = snr.sigma(lam_1), snr.sigma(lam_2)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        x2, sde_noise = _first_stage(x, denoised, sigmas[i], sigma_1, alpha_1, r_1, h, eta, h_eta, noise, s_noise,
                                     inject)
        denoised_2 = model(x2, sigma_1 * s_in)
        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = _h_phi_1(-r_2 * h_eta) - a3_2
        x3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            sde_noise = _chained(sde_noise, (r_1 - r_2) * h * eta, noise(sigma_1, sigma_2))
            x3 = x3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x3, sigma_2 * s_in)
        b3 = _h_phi_2(-h_eta) / r_2
        b1 = _h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            sde_noise = _chained(sde_noise, (r_2 - 1) * h * eta, noise(sigma_2, sigmas[i + 1]))
            x = x + sde_noise * sigmas[i + 1] * s_noise
        callback(i)
    return x
