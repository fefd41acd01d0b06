"""Differential diffusion (Levin & Fried 2023), as ComfyUI's DifferentialDiffusion node: the sampler's noise
mask is thresholded at every step by how much of the schedule is left, so a pixel whose mask is m is
repainted during the last m of the steps only."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DifferentialMask:
    """A denoise-mask function (DiffusionModel.denoise_mask_function): f(sigma, mask, model, sigmas)."""

    strength: float = 1.0

    def __call__(self, sigma: torch.Tensor, mask: torch.Tensor, model, sigmas: torch.Tensor) -> torch.Tensor:
        sampling = model.sampling
        # the walk's own ends in timesteps (its last sigma is 0, which means the schedule's smallest)
        sigma_to = torch.maximum(sampling.sigma_min.to(sigmas.device), sigmas[-1])
        ts_from, ts_to = sampling.timestep(sigmas[0]), sampling.timestep(sigma_to)
        now = sampling.timestep(sigma[0])
        threshold = (now - ts_to) / (ts_from - ts_to)
        binary = (mask >= threshold).to(mask.dtype)
        if self.strength and self.strength < 1:
            return self.strength * binary + (1 - self.strength) * mask
        return binary
