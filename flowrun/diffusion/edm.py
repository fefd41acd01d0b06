"""A continuous noise schedule for models trained on EDM-style sigmas (Karras et al. 2022), as ComfyUI's
ModelSamplingContinuousEDM: 1000 sigmas log-spaced between sigma_min and sigma_max, the UNet's timestep
0.25 * ln(sigma), and the model's output read as epsilon, v or EDM's denoiser parametrisation."""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.model import ModelSampling

EDM_PREDICTIONS = ("epsilon", "v_prediction", "edm")


class ContinuousEDMSampling(ModelSampling):
    """EDM sigmas. `base` is the discrete schedule the model came with, which ModelSamplingDiscrete goes
    back to."""

    def __init__(self, prediction_type: str, sigma_min: float, sigma_max: float, sigma_data: float,
                 base: ModelSampling):
        if prediction_type not in EDM_PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction_type!r}; known: {', '.join(EDM_PREDICTIONS)}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be above 0 and below sigma_max ({sigma_max})")
        self.prediction_type, self.sigma_data, self.base = prediction_type, sigma_data, base
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()

    def with_prediction(self, prediction_type: str, zsnr: bool = False) -> ModelSampling:
        return self.base.with_prediction(prediction_type, zsnr)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        low = math.log(float(self.sigma_min))
        return math.exp((math.log(float(self.sigma_max)) - low) * (1.0 - percent) + low)

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction_type != "edm":
            return super().calculate_denoised(sigma, output, x)
        sigma = sigma.view(sigma.shape[:1] + (1,) * (output.ndim - 1))
        sd2 = self.sigma_data ** 2
        return x * sd2 / (sigma ** 2 + sd2) + output * sigma * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
