"""The contract by which conditioning entries give the UNet more than a text context (diffusion/unet_inputs.py):
a Control's residuals reach the UNet only for the entries that carry it, entries with other controls are
not batched together, extra input channels are built for inpainting models, and a conditioning that
carries a model stays out of the disk cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flowrun.cache import codecs
from flowrun.diffusion.clip import encode
from flowrun.diffusion.concat import concat_channels
from flowrun.diffusion.ksampler import ksample
from flowrun.values import CondEntry, Conditioning, Latent


class Recording:
    """A Control that adds a constant to the UNet's middle block and records each pass's batch size."""

    def __init__(self, value: float, active: bool = True):
        self.value, self.active, self.batches = value, active, []

    def residuals(self, x, t, sigma, context, added):
        self.batches.append(x.shape[0])
        if not self.active:
            return None
        return {"mid_block_additional_residual": self._mid(x)}

    def _mid(self, x):
        return torch.full((x.shape[0], self.channels, x.shape[2] // 2 ** self.downs, x.shape[3] // 2 ** self.downs),
                          self.value)


@pytest.fixture(scope="module")
def prompts(tiny_bundle):
    clip = tiny_bundle[1]
    return {t: encode(clip, t) for t in ("a red circle", "")}


def _sample(model, positive, negative, seed=3):
    return ksample(model, seed=seed, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                   positive=positive, negative=negative, latent=Latent(torch.zeros(1, 4, 16, 16))).samples


def _with_control(cond: Conditioning, control) -> Conditioning:
    return cond.map(lambda e: e.replace(control=control))


def _fit(control, model):
    cfg = model.unet.config
    control.channels = cfg.block_out_channels[-1]
    control.downs = len(cfg.block_out_channels) - 1
    return control


def test_a_control_reaches_the_unet_only_for_its_entries(tiny_bundle, prompts):
    model = tiny_bundle[0]
    red, empty = prompts["a red circle"], prompts[""]
    plain = _sample(model, red, empty)
    idle = _fit(Recording(1.0, active=False), model)
    # the same numbers (up to rounding: positive and negative now run as two passes of one row each)
    assert torch.allclose(_sample(model, _with_control(red, idle), empty), plain, rtol=1e-4, atol=1e-3)
    assert idle.batches == [1] * 3
    pushed = _fit(Recording(1.0), model)
    changed = _sample(model, _with_control(red, pushed), empty)
    assert not torch.allclose(changed, plain)
    # the same control on both: one batched pass of two rows per step
    both = _fit(Recording(1.0), model)
    assert torch.equal(_sample(model, _with_control(red, both), _with_control(empty, both)),
                       _sample(model, _with_control(red, both), _with_control(empty, both)))
    assert set(both.batches) == {2}


def test_inpainting_channels_follow_comfyui(tiny_bundle):
    model = tiny_bundle[0]
    nine = dataclasses.replace(model, unet=type("U", (), {"config": type("C", (), {"in_channels": 9})()})())
    latent = torch.randn(2, 4, 8, 8)
    plain = CondEntry(torch.zeros(1, 2, 4))
    blank = concat_channels(nine, plain, latent, None)
    assert blank.shape == (1, 5, 8, 8) and torch.all(blank[:, 0] == 1)
    mask = torch.zeros(2, 4, 8, 8)
    mask[:, :, 2:5] = 1
    from_mask = concat_channels(nine, plain, latent, mask)
    assert torch.equal(from_mask[:, :1], mask[:, :1]) and torch.equal(from_mask[:, 1:], latent)
    assert concat_channels(model, plain, latent, mask) is None  # a 4-channel model takes none


def test_a_conditioning_with_a_control_is_not_written_to_disk(prompts):
    red = _with_control(prompts["a red circle"], Recording(1.0))
    with pytest.raises(codecs.NotStorable, match="Recording cannot be written"):
        codecs.for_port("CONDITIONING").encode(red)
    assert codecs.for_port("CONDITIONING").decode(codecs.for_port("CONDITIONING").encode(prompts[""]))[0].control is None
