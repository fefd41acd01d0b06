"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) in its noise-prediction form, as ComfyUI runs `dpm_fast`:
the sampler ignores the scheduler's sigmas except the first and the last non-zero one, and spends as many
model evaluations as the schedule has steps on DPM-Solver-3 steps equally spaced in t = -log(sigma)
(ending with a second- and first-order step, or one of order NFE mod 3). It stops at that last non-zero
sigma, so a trace of noise is left, as in ComfyUI. No flow form in ComfyUI: a rectified flow runs the same.
"""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.samplers import Callback, Denoiser, ancestral_step


class _Solver:
    """The model as eps(x, t) = (x - D(x, sigma(t))) / sigma(t), each evaluation counted as a step."""

    def __init__(self, model: Denoiser, callback: Callback):
        self.model, self.callback, self.evaluations = model, callback, 0

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    @staticmethod
    def t(sigma):
        return sigma.log().neg()

    def eps(self, x, t):
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        out = (x - self.model(x, sigma)) / self.sigma(t)
        self.callback(self.evaluations)
        self.evaluations += 1
        return out

    def step_1(self, x, t, t_next, eps):
        return x - self.sigma(t_next) * (t_next - t).expm1() * eps

    def step_2(self, x, t, t_next, eps, r1: float = 1 / 2):
        h = t_next - t
        s1 = t + r1 * h
        eps_r1 = self.eps(x - self.sigma(s1) * (r1 * h).expm1() * eps, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, eps, r1: float = 1 / 3, r2: float = 2 / 3):
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        eps_r1 = self.eps(x - self.sigma(s1) * (r1 * h).expm1() * eps, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def fast_orders(nfe: int) -> list[int]:
    """The order of each DPM-Solver-fast step for a budget of `nfe` model evaluations."""
    m = math.floor(nfe / 3) + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


def sample_dpm_fast(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 0.0,
                    s_noise: float = 1.0):
    if len(sigmas) <= 1:
        return x
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    solver = _Solver(model, callback)
    t_start, t_end = solver.t(sigmas[0]), solver.t(sigma_min)
    noise = seed_noise.gaussian(x)
    orders = fast_orders(len(sigmas) - 1)
    ts = torch.linspace(t_start, t_end, math.floor((len(sigmas) - 1) / 3) + 2, device=x.device)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_step, up = t_next, 0.0
        if eta:
            down, _ = ancestral_step(solver.sigma(t), solver.sigma(t_next), eta)
            t_step = torch.minimum(t_end, solver.t(down))
            up = (solver.sigma(t_next) ** 2 - solver.sigma(t_step) ** 2) ** 0.5
        eps = solver.eps(x, t)
        if order == 1:
            x = solver.step_1(x, t, t_step, eps)
        elif order == 2:
            x = solver.step_2(x, t, t_step, eps)
        else:
            x = solver.step_3(x, t, t_step, eps)
        x = x + up * s_noise * noise(solver.sigma(t), solver.sigma(t_next))
    return x
