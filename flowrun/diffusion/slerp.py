"""Spherical linear interpolation between tensors, row by row: the path between two Gaussian noises (or
two latents) that keeps their length, where a straight blend would shrink it towards the middle.

Each batch row is one vector (all its channels and pixels flattened). With Ω the angle between the rows
of `a` and `b`: slerp(t) = (sin((1 - t)·Ω)·a + sin(t·Ω)·b) / sin Ω, so t = 0 gives `a` and t = 1 gives `b`
exactly. Rows that are (nearly) parallel or opposite, where sin Ω vanishes, are blended linearly.

AUTOMATIC1111's variation seed slerps the same way with two differences: it normalises along dim 1 of
a [C, H, W] noise (so each (channel, column) is a vector of its own), and its near-parallel fallback
swaps the weights (`low * val + high * (1 - val)`). flowrun takes each row's whole noise as one vector
and blends the fallback the right way round, so images will not match A1111's pixel for pixel.
"""

from __future__ import annotations

import torch

PARALLEL = 0.9995  # cos Ω above this: blend linearly (A1111's threshold), sin Ω is too small to divide by


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a` moved towards `b` by `t` (0: a, 1: b) along the great circle, each batch row on its own; float64
    arithmetic, the result in `a`'s dtype."""
    if a.shape != b.shape:
        raise ValueError(f"slerp of tensors of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    rows = a.shape[0]
    x, y = a.reshape(rows, -1).double(), b.reshape(rows, -1).double()
    unit_x = torch.nan_to_num(x / x.norm(dim=1, keepdim=True))
    unit_y = torch.nan_to_num(y / y.norm(dim=1, keepdim=True))
    cos = (unit_x * unit_y).sum(dim=1).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    straight = (cos.abs() > PARALLEL).unsqueeze(1)
    safe_sin = torch.where(straight.squeeze(1), torch.ones_like(sin), sin)
    wx = torch.where(straight, torch.full_like(x[:, :1], 1.0 - t), (torch.sin((1.0 - t) * omega) / safe_sin).unsqueeze(1))
    wy = torch.where(straight, torch.full_like(x[:, :1], t), (torch.sin(t * omega) / safe_sin).unsqueeze(1))
    return (wx * x + wy * y).reshape(a.shape).to(a.dtype)
