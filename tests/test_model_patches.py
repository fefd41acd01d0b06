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


# --- patches inside the UNet and model sampling ------------------------------------------------------------

import math  # noqa: E402

import numpy as np  # noqa: E402

from flowrun.diffusion.unet_patches import Pass, attached, fourier_filter, freeu_backbone  # noqa: E402


def _node(name, model, **params):
    nd = default_registry(builtin_only=True).get(name)
    return nd(nd.params(**params), RunContext(), model=model)


def _render(model, clip, steps=3, cfg=5.0):
    return ksample(model, seed=3, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
                   positive=encode(clip, "a red circle"), negative=encode(clip, ""),
                   latent=Latent(torch.zeros(1, 4, 8, 8))).samples


def _close(a, b):
    """Equal up to float rounding (the latents here reach a few hundred)."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def _no_hooks_left(unet):
    for module in unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    for name, proc in unet.attn_processors.items():
        assert type(proc).__module__.startswith("diffusers"), name


def test_fourier_filter_scales_the_four_lowest_frequencies():
    """With threshold 1, the centred 2x2 square of the shifted spectrum holds the frequencies (0 or -1) x
    (0 or -1); scaling them is checked against numpy's FFT in unshifted coordinates."""
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(1))
    spectrum = np.fft.fft2(x.double().numpy())
    mask = np.ones((8, 6))
    for ky in (0, -1):
        for kx in (0, -1):
            mask[ky, kx] = 0.3
    expected = np.fft.ifft2(spectrum * mask).real
    assert np.allclose(fourier_filter(x, 1, 0.3).double().numpy(), expected, atol=1e-5)
    assert torch.allclose(fourier_filter(x, 1, 1.0), x, atol=1e-5)


def test_freeu_backbone_scales_half_of_the_channels():
    h = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    v1 = freeu_backbone(h, 1.5, v2=False)
    assert torch.equal(v1[:, 2:], h[:, 2:]) and torch.allclose(v1[:, :2], h[:, :2] * 1.5)
    mean = h.mean(1, keepdim=True)
    lo, hi = mean.amin(dim=(2, 3), keepdim=True), mean.amax(dim=(2, 3), keepdim=True)
    v2 = freeu_backbone(h, 1.5, v2=True)
    assert torch.allclose(v2[:, :2], h[:, :2] * (1 + 0.5 * (mean - lo) / (hi - lo)), atol=1e-6)
    assert torch.equal(v2[:, 2:], h[:, 2:])


def test_freeu_applies_at_comfyuis_blocks_on_the_joined_features(tiny_bundle):
    """The tiny UNet has model_channels 32: only joins whose h has 64 channels take (b2, s2); none has
    128, so b1 and s1 do nothing (diffusers' enable_freeu would use b1 at its first up block)."""
    model, clip, _ = tiny_bundle
    unet = model.unet
    first = unet.up_blocks[0].resnets[0]
    seen = []
    recorder = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([500.0])
    ctx = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(4))
    from flowrun.diffusion.unet_patches import FreeU

    try:
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
            with attached(unet, (FreeU(3.0, 1.4, 0.5, 0.7),), Pass(torch.tensor([1.0]))):
                first._forward_pre_hooks.move_to_end(recorder.id)  # record after FreeU's hook
                unet(x, t, encoder_hidden_states=ctx)
    finally:
        recorder.remove()
    plain, patched = seen
    h, hsp = plain[:, :64], plain[:, 64:]  # h comes from the middle block: 64 channels
    assert torch.allclose(patched[:, :32], h[:, :32] * 1.4, atol=1e-5)
    assert torch.allclose(patched[:, 32:64], h[:, 32:], atol=1e-6)
    assert torch.allclose(patched[:, 64:], fourier_filter(hsp, 1, 0.7), atol=1e-5)
    _no_hooks_left(unet)

    before = _render(model, clip)
    neutral = _node("FreeU", model, b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    assert _close(_render(neutral, clip), before)
    only_b1 = _node("FreeU", model, b1=2.0, b2=1.0, s1=0.5, s2=1.0)
    assert _close(_render(only_b1, clip), before)
    for name in ("FreeU", "FreeU_V2"):
        patched = _node(name, model, b2=1.6, s2=0.2)
        assert model.unet_patches == () and patched.unet is model.unet
        assert not _close(_render(patched, clip), before)
    _no_hooks_left(unet)
    assert torch.equal(_render(model, clip), before)


def _mid_input_size(model, sigma, patch):
    unet, sizes = model.unet, []
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([500.0])
    hook = unet.mid_block.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad(), attached(unet, (patch,), Pass(torch.tensor([sigma]))):
            out = unet(x, t, encoder_hidden_states=torch.zeros(1, 77, 32)).sample
    finally:
        hook.remove()
    assert out.shape == x.shape
    return sizes[0]


def test_deep_shrink_downscales_only_inside_its_percent_range(tiny_bundle):
    model, clip, _ = tiny_bundle
    patched = _node("PatchModelAddDownscale", model, block_number=1, downscale_factor=2.0, start_percent=0.2,
                    end_percent=0.5)
    shrink = patched.unet_patches[0]
    assert model.unet_patches == ()
    assert shrink.sigma_start == model.sampling.percent_to_sigma(0.2)
    assert shrink.sigma_end == model.sampling.percent_to_sigma(0.5)
    inside = (shrink.sigma_start + shrink.sigma_end) / 2
    assert _mid_input_size(model, inside, shrink) == (2, 2)  # 8 -> 4 (shrink) -> 2 (downsampler)
    for outside in (shrink.sigma_start * 1.5, shrink.sigma_end * 0.5):
        assert _mid_input_size(model, outside, shrink) == (4, 4)
    before_skip = _node("PatchModelAddDownscale", model, block_number=1, downscale_after_skip=False,
                        downscale_method="bislerp", upscale_method="bilinear").unet_patches[0]
    assert _mid_input_size(model, 10.0, before_skip) == (2, 2)
    _no_hooks_left(model.unet)

    before = _render(model, clip)
    for after_skip in (True, False):
        shrunk = _node("PatchModelAddDownscale", model, block_number=1, end_percent=1.0,
                       downscale_after_skip=after_skip)
        assert not _close(_render(shrunk, clip), before)
    neutral = _node("PatchModelAddDownscale", model, block_number=1, downscale_factor=1.0, end_percent=1.0)
    assert _close(_render(neutral, clip), before)
    _no_hooks_left(model.unet)
    assert torch.equal(_render(model, clip), before)


def test_continuous_edm_sampling(tiny_bundle):
    from flowrun.diffusion import schedules

    model, clip, _ = tiny_bundle
    edm = _node("ModelSamplingContinuousEDM", model, sampling="edm", sigma_max=80.0, sigma_min=0.01)
    ms = edm.sampling
    assert model.sampling.prediction_type == "epsilon" and model.latent_format is None
    expected = [math.exp(math.log(0.01) + i * (math.log(80.0) - math.log(0.01)) / 999) for i in (0, 500, 999)]
    assert np.allclose([float(ms.sigmas[i]) for i in (0, 500, 999)], expected, rtol=1e-5)
    sigma = torch.tensor([2.0, 0.1])
    assert torch.allclose(ms.timestep(sigma), 0.25 * torch.log(sigma))
    assert torch.allclose(ms.sigma(ms.timestep(sigma)), sigma)
    assert math.isclose(ms.percent_to_sigma(0.5), math.sqrt(80.0 * 0.01), rel_tol=1e-5)
    # normal: timesteps evenly spaced in 0.25 ln sigma, i.e. sigmas geometric from sigma_max to sigma_min
    assert np.allclose(schedules.calculate(ms, "normal", 4)[:-1].numpy(),
                       [80.0 * (0.01 / 80.0) ** (i / 3) for i in range(4)], rtol=1e-4)
    # EDM's preconditioning with sigma_data 0.5: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2)
    x, out = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.allclose(ms.calculate_denoised(sigma, out, x),
                          x * 0.25 / (s ** 2 + 0.25) + out * s * 0.5 / (s ** 2 + 0.25).sqrt(), atol=1e-6)
    assert torch.allclose(ms.calculate_input(sigma, x), x / (s ** 2 + 0.25).sqrt())
    v = _node("ModelSamplingContinuousEDM", model, sampling="v_prediction").sampling
    assert torch.allclose(v.calculate_denoised(sigma, out, x), x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt(),
                          atol=1e-6)
    playground = _node("ModelSamplingContinuousEDM", model, sampling="edm_playground_v2.5")
    latent = torch.randn(1, 4, 2, 2)
    assert torch.allclose(playground.latent_out(playground.latent_in(latent)), latent, atol=1e-5)
    # going back to a discrete schedule gives the model's own
    assert torch.equal(ms.with_prediction("epsilon").sigmas, model.sampling.sigmas)

    before = _render(model, clip)
    for node_model in (edm, _node("ModelSamplingContinuousEDM", model, sampling="eps")):
        assert not _close(_render(node_model, clip), before)
    assert torch.equal(_render(model, clip), before)


def test_gaussian_blur_and_sag_blur_map():
    from flowrun.diffusion.post_cfg import blur_where_attended, gaussian_blur

    img = torch.zeros(1, 1, 17, 17)  # an impulse far enough from the edges that no reflection reaches it
    img[0, 0, 8, 8] = 1.0
    blurred = gaussian_blur(img, 9, 2.0)
    t = torch.arange(-4.0, 5.0)
    g = torch.exp(-t ** 2 / 8)
    assert torch.allclose(blurred[0, 0, 4:13, 4:13], torch.outer(g, g) / g.sum() ** 2, atol=1e-6)
    assert math.isclose(float(blurred.sum()), 1.0, rel_tol=1e-5)
    assert torch.equal(gaussian_blur(img, 9, 0.0), img)
    narrow = torch.zeros(1, 1, 6, 6)  # a 6-wide image takes a 7-tap kernel
    narrow[0, 0, 3, 3] = 1.0
    g7 = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 8)
    assert torch.allclose(gaussian_blur(narrow, 9, 2.0)[0, 0, 3, 3], (g7[3] / g7.sum()) ** 2, atol=1e-6)
    # a 2x2 attention map at an 8x8 latent (ratio 4): keys 0 and 3 receive all attention, so the top-left
    # and bottom-right quarters are blurred and the others kept
    attn = torch.zeros(2, 4, 4)  # 2 heads, one row
    attn[:, :2, 0] = 1.0
    attn[:, 2:, 3] = 1.0
    x0 = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    out = blur_where_attended(x0, attn, 1.0)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat_interleave(4, 0).repeat_interleave(4, 1) > 0
    assert torch.equal(out[0, 0][~mask], x0[0, 0][~mask])
    assert torch.allclose(out[0, 0][mask], gaussian_blur(x0, 9, 1.0)[0, 0][mask])


def test_attention_guidance_patches(tiny_bundle):
    """PAG and SAG change the render; scale 0 reproduces it; the attention processors come back."""
    model, clip, _ = tiny_bundle
    before = _render(model, clip, steps=2)
    for name, params in (("PerturbedAttentionGuidance", {"scale": 3.0}),
                         ("SelfAttentionGuidance", {"scale": 1.0, "blur_sigma": 2.0})):
        patched = _node(name, model, **params)
        assert model.post_cfg_functions == () and model.unet_patches == () and patched.unet is model.unet
        assert not _close(_render(patched, clip, steps=2), before)
        neutral = _node(name, model, **{**params, "scale": 0.0})
        assert _close(_render(neutral, clip, steps=2), before)
        _no_hooks_left(model.unet)
    # SAG runs the negative prompt at cfg 1 too; stacked, both functions apply in order
    sag = _node("SelfAttentionGuidance", model, scale=1.0)
    assert not _close(_render(sag, clip, steps=2, cfg=1.0), _render(model, clip, steps=2, cfg=1.0))
    both = _node("PerturbedAttentionGuidance", sag, scale=2.0)
    assert [type(f).__name__ for f in both.post_cfg_functions] == ["SelfAttentionGuidance",
                                                                   "PerturbedAttentionGuidance"]
    _no_hooks_left(model.unet)
    assert torch.equal(_render(model, clip, steps=2), before)
