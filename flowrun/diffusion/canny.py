"""Canny edge detection as kornia's `kornia.filters.canny` computes it, which ComfyUI's Canny node calls.

Written here rather than taken from a library: kornia is not a dependency of flowrun, and scikit-image's
and OpenCV's canny differ from kornia's in ways that change the edge map (thresholds on another gradient
scale, other smoothing and non-maximum suppression), so a hint made by them would not be the one a
ComfyUI graph makes. The steps: grayscale (0.299 R + 0.587 G + 0.114 B), 5x5 Gaussian blur (sigma 1,
reflected borders), unnormalised Sobel gradients (replicated borders), magnitude sqrt(gx^2 + gy^2 + eps),
direction rounded to 45 degrees, non-maximum suppression against both neighbours along it (a pixel is kept
only where it is strictly larger), double threshold (weak 0.5, strong 1) and hysteresis until nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# neighbour offsets (dy, dx) for directions 0, 45, ..., 315 degrees, in kornia's order
_DIRECTIONS = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]


def _neighbour_kernels(centre: float) -> torch.Tensor:
    """[8, 1, 3, 3]: `centre` at the middle (if any) and -1 / 1 at each direction's neighbour."""
    kernels = torch.zeros(8, 1, 3, 3)
    for i, (dy, dx) in enumerate(_DIRECTIONS):
        kernels[i, 0, 1 + dy, 1 + dx] = -1.0 if centre else 1.0
        kernels[i, 0, 1, 1] = centre
    return kernels


def _gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    offsets = torch.arange(size, dtype=x.dtype) - size // 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    pad = size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, size))
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, size, 1))


def canny(image: torch.Tensor, low_threshold: float = 0.1, high_threshold: float = 0.2,
          eps: float = 1e-6) -> torch.Tensor:
    """Edges [b, 1, h, w] in {0, 1} of an image [b, c, h, w] in 0..1 (c = 3: RGB, c = 1: gray)."""
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
    x = image.float()
    if x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    blurred = _gaussian_blur(x)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().reshape(1, 1, 3, 3))
    magnitude = torch.sqrt(gx * gx + gy * gy + eps)
    angle = torch.round(torch.rad2deg(torch.atan2(gy, gx)) / 45) * 45

    differences = F.conv2d(magnitude, _neighbour_kernels(1.0), padding=1)  # centre minus each neighbour
    forward = ((angle / 45) % 8).long()
    backward = ((angle / 45 + 4) % 8).long()
    is_max = torch.minimum(differences.gather(1, forward), differences.gather(1, backward)) > 0.0
    magnitude = magnitude * is_max

    edges = (magnitude > low_threshold) * 0.5 + (magnitude > high_threshold) * 0.5
    neighbours = _neighbour_kernels(0.0)
    previous = -torch.ones_like(edges)
    connected = edges
    while (previous != edges).any():
        weak, strong = (edges == 0.5).float(), (edges == 1).float()
        touching = (F.conv2d(edges, neighbours, padding=1) == 1).any(1, keepdim=True).float()
        connected = touching * weak + strong
        previous = edges.clone()
        edges = connected + (connected == 0) * weak * 0.5
    return connected
