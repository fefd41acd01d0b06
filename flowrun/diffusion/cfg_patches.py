"""Guidance functions that replace plain classifier-free guidance, set on a model by patch nodes.

Each is f(cond, uncond, cfg, x, sigma) -> denoised, where cond and uncond are the denoised predictions
with and without the prompt, x the noisy latent and sigma its noise level (one per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RescaleCFG:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4): guidance
    in v-space, its result rescaled to the standard deviation of the conditional prediction, mixed back
    with the plain result by `multiplier`. As ComfyUI computes it, for any prediction type."""

    multiplier: float

    def __call__(self, cond, uncond, cfg, x, sigma):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        x_scaled = x / (sigma * sigma + 1.0)
        root = (sigma ** 2 + 1.0) ** 0.5
        # the round trips through x - prediction are ComfyUI's (its cfg functions see x - denoised), kept
        # so that the floats round alike
        v_cond = (x_scaled - (x - (x - cond))) * root / sigma
        v_uncond = (x_scaled - (x - (x - uncond))) * root / sigma
        v_cfg = v_uncond + cfg * (v_cond - v_uncond)
        ro_pos = torch.std(v_cond, dim=tuple(range(1, v_cond.ndim)), keepdim=True)
        ro_cfg = torch.std(v_cfg, dim=tuple(range(1, v_cfg.ndim)), keepdim=True)
        v_final = self.multiplier * (v_cfg * (ro_pos / ro_cfg)) + (1.0 - self.multiplier) * v_cfg
        return x - (x - (x_scaled - v_final * sigma / root))  # x / (s^2 + 1) - v * s / sqrt(s^2 + 1)
