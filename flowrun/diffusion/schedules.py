"""Schedulers: ComfyUI's names, each a rule that turns (model schedule, steps) into a sigma sequence ending in 0.

Semantics follow ComfyUI's `comfy/samplers.py` and `k_diffusion/sampling.py`, and the papers they cite:
karras (Karras et al. 2022, rho 7), exponential (uniform in log sigma), normal (uniform in timestep,
log-sigma interpolation), sgm_uniform (the same without the last timestep), simple and ddim_uniform
(strided picks of the 1000 training sigmas), beta (Lee et al. 2024, alpha = beta = 0.6), linear_quadratic
(Genmo's Mochi schedule), kl_optimal (Sabour et al. 2024).
"""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.model import ModelSampling
from flowrun.diffusion.names import SCHEDULERS

# these samplers take two model calls per step ending mid-interval: ComfyUI builds steps+1 sigmas and drops
# the penultimate one
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log sigma falling from sigma_max to sigma_min along a polynomial ramp of degree rho."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sd_turbo(ms: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD Turbo's schedule: timesteps 999, 899, ... 99 from the one `denoise` reaches, `steps` of them."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    return _append_zero(ms.sigma(timesteps))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    idx = torch.arange(n, dtype=torch.float).div_(n - 1) if n > 1 else torch.zeros(1)
    sigmas = idx.new_zeros(n + 1)
    sigmas[:-1] = (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan_()
    return sigmas


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigs + [0.0] if append_zero else sigs)


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    stride = len(ms.sigmas) / steps
    return torch.FloatTensor([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=1e-5):
        steps, sigs = steps + 1, []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += stride
    return torch.FloatTensor(sigs[::-1])


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    import numpy as np
    import scipy.stats

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta_) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic(ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None):
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        q_coef = diff / (linear_steps * quadratic_steps ** 2)
        l_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps ** 2)
        const = q_coef * (linear_steps ** 2)
        quadratic = [q_coef * (i ** 2) + l_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max.cpu()


def calculate(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The sigma sequence (steps + 1 values) for a scheduler name."""
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    if scheduler == "normal":
        return normal(ms, steps)
    if scheduler == "sgm_uniform":
        return normal(ms, steps, sgm=True)
    if scheduler == "karras":
        return karras(steps, smin, smax)
    if scheduler == "exponential":
        return exponential(steps, smin, smax)
    if scheduler == "simple":
        return simple(ms, steps)
    if scheduler == "ddim_uniform":
        return ddim_uniform(ms, steps)
    if scheduler == "beta":
        return beta(ms, steps)
    if scheduler == "linear_quadratic":
        return linear_quadratic(ms, steps)
    if scheduler == "kl_optimal":
        return kl_optimal(steps, smin, smax)
    raise ValueError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")


def sampler_sigmas(ms: ModelSampling, scheduler: str, sampler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas KSampler walks: with denoise < 1, a schedule of steps/denoise steps of which the last
    steps + 1 are kept; for dpm_2 and uni_pc, steps + 1 sigmas with the penultimate dropped."""

    def full(n: int) -> torch.Tensor:
        if sampler in DISCARD_PENULTIMATE:
            s = calculate(ms, scheduler, n + 1)
            return torch.cat([s[:-2], s[-1:]])
        return calculate(ms, scheduler, n)

    if denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return full(int(steps / denoise))[-(steps + 1):]
