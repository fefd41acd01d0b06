"""Rectified-flow model sampling (Liu et al. 2022; Esser et al. 2024 for SD3): the latent at noise level
sigma in [0, 1] is x = sigma * noise + (1 - sigma) * latent, the model predicts the velocity v = noise -
latent, and the clean latent is x - sigma * v. ComfyUI's ModelSamplingDiscreteFlow (SD3, AuraFlow) and
ModelSamplingFlux with its CONST prediction, behind ModelSampling's interface so that every scheduler and
sampler runs on them as on a DDPM model.

The training schedule is shifted towards high noise: SD3's `shift` maps t to shift * t / (1 + (shift - 1) * t)
(time_snr_shift), Flux's `mu` maps t to e^mu / (e^mu + 1/t - 1) (flux_time_shift, with mu chosen from the
image size). As in ComfyUI, the model's timestep is sigma times `multiplier` (1000 for SD3, 1 for
AuraFlow and Flux), not the inverse of the shift: schedules that walk timesteps (normal, sgm_uniform) map
them through the shift again, which is what ComfyUI's schedules give for these models.
"""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.model import ModelSampling


def time_snr_shift(shift: float, t):
    """SD3's shift of a time t in [0, 1] (ComfyUI's time_snr_shift): shift * t / (1 + (shift - 1) * t)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_time_shift(mu: float, t):
    """Flux's shift of a time t in (0, 1] (ComfyUI's flux_time_shift with exponent 1): e^mu / (e^mu + 1/t - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """Flux's mu for an image size: linear in the number of 2x2 latent patches, base_shift at 256 patches
    (256x256 pixels) and max_shift at 4096 (1024x1024), as ComfyUI's ModelSamplingFlux node."""
    slope = (max_shift - base_shift) / (4096 - 256)
    return (width * height / (8 * 8 * 2 * 2)) * slope + (base_shift - slope * 256)


class FlowSampling(ModelSampling):
    """A rectified-flow schedule: `timesteps` sigmas shift(i / timesteps) for i = 1..timesteps, the model's
    timestep sigma * multiplier. `base`: the discrete schedule ModelSamplingDiscrete goes to from here."""

    flow = True
    prediction_type = "flow"

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0, timesteps: int = 1000,
                 base: ModelSampling | None = None):
        self.shift, self.multiplier = float(shift), float(multiplier)
        self.base = base if base is not None else ModelSampling("epsilon")
        self.sigma_data = 1.0
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * self.multiplier)

    def with_prediction(self, prediction_type: str, zsnr: bool = False) -> ModelSampling:
        return self.base.with_prediction(prediction_type, zsnr)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self._shifted(1.0 - percent))

    def _shifted(self, t: float) -> float:
        return time_snr_shift(self.shift, t)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (output.ndim - 1))
        return x - output * sigma

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool = False):
        """sigma * noise + (1 - sigma) * latent, at any denoise (a flow model's start at sigma 1 is pure noise)."""
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """A latent left at noise level sigma as the clean latent's scale: latent / (1 - sigma), so that a later
        noise_scaling (KSamplerAdvanced continuing without new noise) gives it back."""
        sigma = sigma.view(sigma.shape[:1] + (1,) * (latent.ndim - 1))
        return latent / (1.0 - sigma)


class FluxSampling(FlowSampling):
    """Flux's schedule: 10000 sigmas flux_time_shift(mu, t), the model's timestep sigma itself."""

    def __init__(self, mu: float = 1.15, timesteps: int = 10000, base: ModelSampling | None = None):
        self.mu = float(mu)
        super().__init__(shift=1.0, multiplier=1.0, timesteps=timesteps, base=base)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return flux_time_shift(self.mu, timestep)

    def _shifted(self, t: float) -> float:
        return flux_time_shift(self.mu, t)
