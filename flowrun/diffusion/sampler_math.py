"""What the samplers share (samplers.py and the modules it picks from): the denoiser and step-callback
types, the Karras ODE derivative, the ancestral split of a step, and how a sampler reads a sigma's
log-SNR for variance-exploding and rectified-flow models. A leaf module, so that the sampler modules
import it without a cycle through samplers.get."""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int], None]


def to_d(x, sigma, denoised):
    """The Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma.view(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up): where to step deterministically and how much fresh noise to add."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _ones(x):
    return x.new_ones([x.shape[0]])


class Snr:
    """How the DPM-Solver++ SDE samplers read a sigma: lam(sigma) = log(alpha / sigma), its inverse, and the
    first sigma moved off where lam is infinite. This one: variance-exploding sigmas (alpha 1)."""

    def lam(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    def sigma(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.neg().exp()

    def offset_first(self, sigmas: torch.Tensor) -> torch.Tensor:
        return sigmas


class FlowSnr(Snr):
    """A rectified flow's (alpha = 1 - sigma): lam = log((1 - sigma) / sigma); a first sigma of 1 becomes
    the sigma at 0.01 % of the schedule (ComfyUI's offset_first_sigma_for_snr)."""

    def __init__(self, percent_to_sigma: Callable[[float], float]):
        self.percent_to_sigma = percent_to_sigma

    def lam(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.logit().neg()

    def sigma(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.neg().sigmoid()

    def offset_first(self, sigmas: torch.Tensor) -> torch.Tensor:
        if len(sigmas) > 1 and sigmas[0] >= 1:
            sigmas = sigmas.clone()
            sigmas[0] = self.percent_to_sigma(1e-4)
        return sigmas
