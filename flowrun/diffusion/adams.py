"""Adams–Bashforth samplers over the derivative d = (x - D) / sigma, as ComfyUI runs them (from Zhou et
al.'s diff-solvers): `ipndm` with the fixed-step coefficients of improved PNDM (Zhang & Chen 2023),
`ipndm_v` with the variable-step ones, and `deis` (Zhang & Chen 2023, "tAB" form) whose coefficients
integrate the Lagrange polynomial through the past derivatives against the exponential integrator's
weight in a variance-preserving time. Up to fourth order (third for deis), rising from Euler in the first
steps; the step into sigma 0 lands on the prediction (ipndm) or is Euler (deis).

None has a flow form in ComfyUI: a rectified-flow model runs the same update.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.noise import SeedNoise
from flowrun.diffusion.sampler_math import Callback, Denoiser, _ones


def _push(buffer: list, d, max_order: int) -> None:
    buffer.append(d)
    if len(buffer) > max_order - 1:
        buffer.pop(0)


def sample_ipndm(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, max_order: int = 4):
    s_in = _ones(x)
    past: list = []
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t * s_in)
        d = (x - denoised) / t
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t) * d
        elif order == 2:
            x_next = x + (t_next - t) * (3 * d - past[-1]) / 2
        elif order == 3:
            x_next = x + (t_next - t) * (23 * d - 16 * past[-1] + 5 * past[-2]) / 12
        else:
            x_next = x + (t_next - t) * (55 * d - 59 * past[-1] + 37 * past[-2] - 9 * past[-3]) / 24
        _push(past, d, max_order)
        x = x_next
        callback(i)
    return x


def _variable_coefficients(order: int, h: list):
    """The variable-step Adams–Bashforth weights of d_n, d_n-1, ... for steps h = [h_n, h_n-1, h_n-2, h_n-3]
    (sigma differences, h_n the step being taken)."""
    if order == 2:
        return [(2 + h[0] / h[1]) / 2, -(h[0] / h[1]) / 2]
    h0, h1, h2 = h[0], h[1], h[2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if order == 3:
        return [(2 + h0 / h1) / 2 + t1, -(h0 / h1) / 2 - (1 + h1 / h2) * t1, t1 * h1 / h2]
    h3 = h[3]
    t2 = ((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2))) \
        * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [(2 + h0 / h1) / 2 + t1 + t2,
            -(h0 / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
            t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2]


def sample_ipndm_v(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, max_order: int = 4):
    s_in = _ones(x)
    past: list = []
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t * s_in)
        d = (x - denoised) / t
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t) * d
        else:
            h = [t_next - t] + [sigmas[i - k] - sigmas[i - k - 1] for k in range(order - 1)]
            coeffs = _variable_coefficients(order, h)
            x_next = x + (t_next - t) * sum(c * v for c, v in zip(coeffs, [d] + past[::-1]))
        _push(past, d, max_order)
        x = x_next
        callback(i)
    return x


# DEIS's time: the variance-preserving t whose sigma(t) = sqrt(e^(beta_d t^2 / 2 + beta_min t) - 1) runs
# from EDM's sigma_max 80 at t = 1 to its sigma_min 0.002 at t = 1e-3 (ComfyUI's fixed constants)
EPSILON_S, EDM_SIGMA_MIN, EDM_SIGMA_MAX = 1e-3, 0.002, 80.0
DEIS_POINTS = 10000  # the Riemann sum over each step


def _vp_time(sigmas: torch.Tensor):
    """(t of each sigma, beta_0, beta_1) of DEIS's variance-preserving schedule, in float32 as ComfyUI."""
    log_min = torch.tensor(EDM_SIGMA_MIN) ** 2 + 1
    log_max = torch.tensor(EDM_SIGMA_MAX) ** 2 + 1
    beta_d = 2 * (log_min.log() / EPSILON_S - log_max.log()) / (EPSILON_S - 1)
    beta_min = log_max.log() - 0.5 * beta_d
    s = sigmas.detach().cpu()
    t = ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: torch.Tensor, max_order: int) -> list[list[torch.Tensor]]:
    """Per step, the weights of d_n, d_n-1, ...: the integral over [t_n, t_n+1] of the exponential
    integrator's weight -1/2 dlog(alpha)/dt / sqrt(alpha (1 - alpha)) times each Lagrange basis polynomial
    through the past times (a Riemann sum of DEIS_POINTS points). Steps into sigma 0 are Euler. The
    derivative of log(alpha) is written out, where ComfyUI takes it by autograd (equal up to rounding)."""
    t, beta_0, beta_1 = _vp_time(sigmas)
    out: list[list[torch.Tensor]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0:
            out.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), DEIS_POINTS)
        dtau = (t[i + 1] - t[i]) / DEIS_POINTS
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        dlog_alpha = -(taus * (beta_1 - beta_0) + beta_0)
        weight = -0.5 * dlog_alpha / torch.sqrt(alpha * (1 - alpha))
        past_t = t[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            basis = 1
            for k in range(order):
                if k != j:
                    basis = basis * (taus - past_t[k]) / (past_t[j] - past_t[k])
            row.append(torch.sum(weight * basis) * dtau)
        out.append(row)
    return out


def sample_deis(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, max_order: int = 3):
    s_in = _ones(x)
    coefficients = deis_coefficients(sigmas, max_order)
    past: list = []
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t * s_in)
        d = (x - denoised) / t
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (t_next - t) * d
        else:
            x_next = x
            for c, v in zip(coefficients[i], [d] + past[::-1]):
                x_next = x_next + c * v
        _push(past, d, max_order)
        x = x_next
        callback(i)
    return x

