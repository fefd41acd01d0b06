"""Tiled VAE decoding and encoding: the tiling blends exactly for pixel-wise functions, never hands the
function more than a tile, and on the tiny VAE stays close to decoding the whole latent at once."""

from __future__ import annotations

import numpy as np
import torch

from flowrun.diffusion.tiling import three_pass, tiled_scale
from flowrun.diffusion.vae import decode, decode_tiled, encode, encode_tiled
from flowrun.execute.context import RunContext
from flowrun.nodes.registry import default_registry
from flowrun.values import Latent


def _upscale2(seen):
    def run(piece):
        seen.append(tuple(piece.shape[2:]))
        return torch.nn.functional.interpolate(piece, scale_factor=2, mode="nearest") * 3.0
    return run


def test_tiles_blend_into_exactly_the_whole_for_a_pixelwise_function():
    x = torch.randn(2, 3, 20, 29, generator=torch.Generator().manual_seed(1))
    seen: list = []
    whole = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") * 3.0
    tiled = tiled_scale(x, _upscale2(seen), (8, 12), 4, 2.0, 3)
    assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-6)
    assert len(seen) > 4 and all(h <= 8 and w <= 12 for h, w in seen)  # memory bounded by the tile
    assert torch.allclose(three_pass(x, _upscale2([]), 8, 2, 2.0, 3, first_wide=True), whole, atol=1e-5)
    import pytest

    with pytest.raises(ValueError, match="larger than their overlap"):
        tiled_scale(x, _upscale2([]), (4, 12), 4, 2.0, 3)
    # a latent that fits one tile is one call
    seen.clear()
    tiled_scale(x[:1, :, :8, :8], _upscale2(seen), (8, 12), 4, 2.0, 3)
    assert seen == [(8, 8)]


def test_tiled_decode_and_encode_on_the_tiny_vae(tiny_bundle):
    vae = tiny_bundle[2]
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5
    full = decode(vae, latent)
    assert np.allclose(decode_tiled(vae, latent, tile=64, overlap=8), full, atol=1e-5)  # one tile: the same
    tiled = decode_tiled(vae, latent, tile=8, overlap=2)
    assert tiled.shape == full.shape
    assert float(np.abs(tiled - full).mean()) < 0.15, float(np.abs(tiled - full).mean())
    pixels = full
    whole = encode(vae, pixels)
    assert torch.allclose(encode_tiled(vae, pixels, tile=512, overlap=64), whole, atol=1e-5)
    parts = encode_tiled(vae, pixels, tile=64, overlap=8)
    assert parts.shape == whole.shape and float((parts - whole).abs().mean()) < 0.2


def test_the_nodes_take_comfyui_widgets(tiny_bundle):
    reg = default_registry(builtin_only=True)
    vae = tiny_bundle[2]
    latent = Latent(torch.zeros(1, 4, 8, 8))
    dec = reg.get("VAEDecodeTiled")
    assert list(dec.params.model_fields) == ["tile_size", "overlap", "temporal_size", "temporal_overlap"]
    image = dec(dec.params(tile_size=64, overlap=32), RunContext(), samples=latent, vae=vae)
    assert image.shape == (1, 64, 64, 3)
    enc = reg.get("VAEEncodeTiled")
    back = enc(enc.params(tile_size=64, overlap=0), RunContext(), pixels=image, vae=vae)
    assert back.samples.shape == (1, 4, 8, 8)
