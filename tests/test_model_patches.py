"""Model patches: RescaleCFG against its formula, written out here independently, and its effect on a
render; the patched model is a new value and the input model is untouched."""

from __future__ import annotations

import torch

from flowrun.diffusion.cfg_patches import RescaleCFG
from flowrun.diffusion.clip import encode
from flowrun.diffusion.ksampler import ksample
from flowrun.execute.context import RunContext
from flowrun.nodes.registry import default_registry
from flowrun.values import Latent


def _reference(cond, uncond, cfg, x, sigma, multiplier):
    """Lin et al. 2023, eq. 15-16, in v-space: v = (x / (s^2 + 1) - x0) * sqrt(s^2 + 1) / s."""
    s = sigma.view(-1, 1, 1, 1).double()
    x, cond, uncond = x.double(), cond.double(), uncond.double()
    xs = x / (s ** 2 + 1)
    v_pos = (xs - cond) * (s ** 2 + 1).sqrt() / s
    v_neg = (xs - uncond) * (s ** 2 + 1).sqrt() / s
    v_cfg = v_neg + cfg * (v_pos - v_neg)
    rescaled = v_cfg * v_pos.std(dim=(1, 2, 3), keepdim=True) / v_cfg.std(dim=(1, 2, 3), keepdim=True)
    v = multiplier * rescaled + (1 - multiplier) * v_cfg
    return xs - v * s / (s ** 2 + 1).sqrt()


def test_rescale_cfg_follows_the_formula():
    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor([3.0, 0.5])
    for multiplier in (0.0, 0.7, 1.0):
        got = RescaleCFG(multiplier)(cond, uncond, 7.5, x, sigma)
        assert torch.allclose(got.double(), _reference(cond, uncond, 7.5, x, sigma, multiplier), atol=1e-5)
    # multiplier 0 is plain guidance (up to rounding)
    assert torch.allclose(RescaleCFG(0.0)(cond, uncond, 7.5, x, sigma), uncond + (cond - uncond) * 7.5, atol=1e-4)


def test_the_node_patches_a_copy_and_changes_the_render(tiny_bundle):
    model, clip, _ = tiny_bundle
    nd = default_registry(builtin_only=True).get("RescaleCFG")
    patched = nd(nd.params(multiplier=0.7), RunContext(), model=model)
    assert model.cfg_function is None and patched.cfg_function == RescaleCFG(0.7) and patched.unet is model.unet
    kw = dict(seed=2, steps=4, cfg=7.0, sampler_name="euler", scheduler="normal", positive=encode(clip, "a red circle"),
              negative=encode(clip, ""), latent=Latent(torch.zeros(1, 4, 8, 8)))
    plain, rescaled = ksample(model, **kw).samples, ksample(patched, **kw).samples
    assert not torch.allclose(plain, rescaled, atol=1e-3)
    zero = nd(nd.params(multiplier=0.0), RunContext(), model=model)
    assert torch.allclose(ksample(zero, **kw).samples, plain, atol=1e-4)
