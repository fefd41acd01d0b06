"""Run a function over overlapping tiles of an image-like tensor and blend the results, so that memory is
bounded by the tile, not the image (tiled VAE decoding and encoding, tiled upscaling).

Each tile's result is weighted by a mask that ramps linearly over the overlap at its edges; the output is
the weighted sum divided by the summed weights, so where tiles overlap they fade into each other, and a
function that acts pixel by pixel gives exactly what it gives on the whole image. The tile positions and
the ramp are those of ComfyUI's `tiled_scale`, so tiled results match ComfyUI's.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch


def tiled_scale(samples: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], tile: tuple[int, int],
                overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    """`function` applied to [b, c, h, w] `samples` in tiles of tile = (height, width) that overlap by
    `overlap`; `function` maps a tile [1, c, th, tw] to [1, out_channels, th*scale, tw*scale]."""
    if min(tile) <= overlap:
        raise ValueError(f"tiles of {tile[1]}x{tile[0]} must be larger than their overlap of {overlap}")
    dims = samples.shape[2:]
    out_shape = [samples.shape[0], out_channels] + [round(d * scale) for d in dims]
    output = torch.empty(out_shape)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(2)):
            output[b:b + 1] = function(s).float().cpu()
            continue
        out = torch.zeros([1] + out_shape[1:])
        weight = torch.zeros([1] + out_shape[1:])
        positions = [range(0, s.shape[d + 2] - overlap, tile[d] - overlap) if s.shape[d + 2] > tile[d] else [0]
                     for d in range(2)]
        for corner in itertools.product(*positions):
            piece, at = s, []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, corner[d]))
                piece = piece.narrow(d + 2, pos, min(tile[d], s.shape[d + 2] - pos))
                at.append(round(pos * scale))
            result = function(piece).float().cpu()
            mask = torch.ones_like(result)
            feather = round(overlap * scale)
            for d in (2, 3):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    ramp = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(ramp)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(ramp)
            region = (slice(None), slice(None), slice(at[0], at[0] + result.shape[2]),
                      slice(at[1], at[1] + result.shape[3]))
            out[region] += result * mask
            weight[region] += mask
        output[b:b + 1] = out / weight
    return output


def three_pass(samples: torch.Tensor, function, tile: int, overlap: int, scale: float, out_channels: int,
               first_wide: bool) -> torch.Tensor:
    """The mean of three tilings, (tile, tile), (tile/2, tile*2) and (tile*2, tile/2), as ComfyUI's tiled
    VAE passes do, so that no seam falls in the same place twice."""
    shapes = [(tile // 2, tile * 2), (tile * 2, tile // 2), (tile, tile)] if first_wide else \
        [(tile, tile), (tile * 2, tile // 2), (tile // 2, tile * 2)]
    total = None
    for tw, th in shapes:  # ComfyUI passes (tile_x, tile_y): x is the width
        part = tiled_scale(samples, function, (th, tw), overlap, scale, out_channels)
        total = part if total is None else total + part
    return total / 3.0
