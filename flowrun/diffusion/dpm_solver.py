"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) in its noise-prediction form, as ComfyUI runs `dpm_fast`
and `dpm_adaptive`: both ignore the scheduler's sigmas except the first and the last non-zero one, and
stop at that last non-zero sigma, so a trace of noise is left, as in ComfyUI. dpm_fast spends as many
model evaluations as the schedule has steps on DPM-Solver-3 steps equally spaced in t = -log(sigma)
(ending with a second- and first-order step, or one of order NFE mod 3); dpm_adaptive compares a
DPM-Solver-2 and -3 step and lets a PID controller choose the step size (DPM-Solver-23). No flow form in
ComfyUI: a rectified flow runs the same.
"""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, ancestral_step


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

    def step_2(self, x, t, t_next, eps, r1: float = 1 / 2, keep: bool = False):
        """`keep`: also return the evaluation at t + r1 h."""
        h = t_next - t
        s1 = t + r1 * h
        eps_r1 = self.eps(x - self.sigma(s1) * (r1 * h).expm1() * eps, s1)
        out = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return (out, eps_r1) if keep else out

    def step_3(self, x, t, t_next, eps, r1: float = 1 / 3, r2: float = 2 / 3, eps_r1=None):
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        if eps_r1 is None:
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


class StepSizeController:
    """ComfyUI's PID controller of the step size: the factor is a product of powers of past inverse
    errors, softened by 1 + atan(f - 1); a step is accepted when the factor reaches `accept_safety`."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float = 0.81, eps: float = 1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                        icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0):
    """Progress counts accepted steps against the schedule's length (the number of steps is not known
    ahead): it stays at the last step when there are more, and jumps to it at the end when fewer."""
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive's order must be 2 or 3, not {order}")
    if len(sigmas) <= 1:
        return x
    total = len(sigmas) - 1
    accepted = 0

    def on_accept() -> None:
        callback(min(accepted, total) - 1)

    solver = _Solver(model, lambda i: None)
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    t_start, t_end = solver.t(sigmas[0]), solver.t(sigma_min)
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    noise = seed_noise.gaussian(x)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = StepSizeController(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff, 1.5 if eta else order,
                             accept_safety)
    s, x_prev = t_start, x
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_step, up = t, 0.0
        if eta:
            down, _ = ancestral_step(solver.sigma(s), solver.sigma(t), eta)
            t_step = torch.minimum(t_end, solver.t(down))
            up = (solver.sigma(t) ** 2 - solver.sigma(t_step) ** 2) ** 0.5
        eps = solver.eps(x, s)
        if order == 2:
            x_low = solver.step_1(x, s, t_step, eps)
            x_high = solver.step_2(x, s, t_step, eps)
        else:
            # the second-order step's evaluation at h / 3 is the third-order step's first, taken once
            x_low, eps_r1 = solver.step_2(x, s, t_step, eps, r1=1 / 3, keep=True)
            x_high = solver.step_3(x, s, t_step, eps, eps_r1=eps_r1)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + up * s_noise * noise(solver.sigma(s), solver.sigma(t))
            s = t
            accepted += 1
            on_accept()
    if accepted < total:
        callback(total - 1)
    return x
