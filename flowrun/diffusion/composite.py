"""Pasting one NCHW tensor onto another through a mask, as ComfyUI's composite for latents and images."""

from __future__ import annotations

import torch


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask, multiplier: int,
              resize_source: bool) -> torch.Tensor:
    """A copy of destination with source pasted at (x, y) (in units of 1/multiplier of a destination
    pixel: 8 for latents, given in image pixels) through `mask` ([batch or 1, h, w] of any size, stretched
    bilinearly over the source; none: opaque). Batches of 1 are repeated to the destination's; the caller
    has checked that the others match. Whatever falls outside the destination is cut off."""
    out = destination.clone()
    if resize_source:
        source = torch.nn.functional.interpolate(source, size=out.shape[2:], mode="bilinear")
    source = source.expand(out.shape[0], *source.shape[1:])
    left, top = x // multiplier, y // multiplier
    height = max(0, min(source.shape[2], out.shape[2] - top))
    width = max(0, min(source.shape[3], out.shape[3] - left))
    if height == 0 or width == 0:
        return out
    if mask is None:
        weight = torch.ones_like(source[:, :1])
    else:
        m = torch.as_tensor(mask, dtype=torch.float32, device=out.device)
        m = m.reshape(-1, 1, m.shape[-2], m.shape[-1])
        weight = torch.nn.functional.interpolate(m, size=source.shape[2:], mode="bilinear")
        weight = weight.expand(out.shape[0], 1, *weight.shape[2:])
    weight = weight[:, :, :height, :width].to(out.dtype)
    region = out[:, :, top:top + height, left:left + width]
    out[:, :, top:top + height, left:left + width] = weight * source[:, :, :height, :width] + (1 - weight) * region
    return out
