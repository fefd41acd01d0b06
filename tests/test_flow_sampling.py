"""Rectified-flow model sampling: schedules against numbers written out here from ComfyUI's formulas
(time_snr_shift, flux_time_shift) and against diffusers' FlowMatchEulerDiscreteScheduler where the two
coincide; the flow's noise scaling and prediction through the sampler core; the flow forms of the
ancestral steps against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrun.diffusion import samplers, schedules
from flowrun.diffusion.flow_sampling import FlowSampling, FluxSampling, flux_shift
from flowrun.diffusion.names import SAMPLERS, SCHEDULERS
from flowrun.execute.context import RunContext
from flowrun.nodes.registry import default_registry


def sd3(t, shift):
    return shift * t / (1 + (shift - 1) * t)


def flux(t, mu):
    return math.exp(mu) / (math.exp(mu) + 1 / t - 1)


def _node(name, model=None, **params):
    nd = default_registry(builtin_only=True).get(name)
    return nd(nd.params(**params), RunContext(), **({"model": model} if model is not None else {}))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sd3_schedules_follow_comfyui_formulas(shift):
    ms = FlowSampling(shift)
    smin = sd3(0.001, shift)
    assert math.isclose(float(ms.sigma_min), smin, rel_tol=1e-6) and float(ms.sigma_max) == 1.0
    # normal: timesteps 1000 sigma evenly from 1000 to 1000 sigma_min, each shifted (again) to a sigma
    normal = [sd3((1000 + i * (1000 * smin - 1000) / 3) / 1000, shift) for i in range(4)] + [0.0]
    # simple: every 250th of the 1000 training sigmas from the top
    simple = [sd3(t, shift) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    rho = 7.0
    karras = [(1 + i / 3 * (smin ** (1 / rho) - 1)) ** rho for i in range(4)] + [0.0]
    exponential = [math.exp(i / 3 * math.log(smin)) for i in range(4)] + [0.0]
    sgm = [sd3((1000 + i * (1000 * smin - 1000) / 4) / 1000, shift) for i in range(4)] + [0.0]
    kl = [math.tan(i / 3 * math.atan(smin) + (1 - i / 3) * math.atan(1.0)) for i in range(4)] + [0.0]
    for name, expected in [("normal", normal), ("simple", simple), ("karras", karras),
                           ("exponential", exponential), ("sgm_uniform", sgm), ("kl_optimal", kl)]:
        got = schedules.calculate(ms, name, 4).tolist()
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-7), (name, got, expected)
    if shift == 3.0:  # numbers worked out by hand: 3t / (1 + 2t)
        assert np.allclose(schedules.calculate(ms, "simple", 4).tolist(), [1.0, 0.9, 0.75, 0.5, 0.0])
        assert np.allclose(schedules.calculate(ms, "normal", 4).tolist(),
                           [1.0, 0.857692, 0.602151, 0.008929, 0.0], atol=1e-6)
    for name in SCHEDULERS:  # every scheduler gives a falling sequence inside [0, 1] ending at 0
        got = schedules.calculate(ms, name, 5)
        assert got[-1] == 0 and bool((got[:-1] > got[1:]).all()) and float(got.max()) <= 1.0, name


@pytest.mark.parametrize("shift,steps", [(1.0, 4), (3.0, 4), (3.0, 8)])
def test_normal_and_simple_are_diffusers_flow_match_euler(shift, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ms = FlowSampling(shift)
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sch.set_timesteps(steps)  # what StableDiffusion3Pipeline walks by default
    assert np.allclose(schedules.calculate(ms, "normal", steps).numpy(), sch.sigmas.numpy(), atol=1e-6)
    # simple picks every (1000 / steps)th training sigma: the same when steps divides 1000
    sch.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist())
    assert np.allclose(schedules.calculate(ms, "simple", steps).numpy(), sch.sigmas.numpy(), atol=1e-6)


def test_flux_shift_depends_on_the_image_size():
    assert math.isclose(flux_shift(1.15, 0.5, 1024, 1024), 1.15)  # 4096 patches of 2x2 latents
    assert math.isclose(flux_shift(1.15, 0.5, 256, 256), 0.5)  # 256
    assert math.isclose(flux_shift(1.15, 0.5, 512, 512), 0.5 + 0.65 * 768 / 3840)  # 0.63
    ms = FluxSampling(flux_shift(1.15, 0.5, 512, 512))
    assert len(ms.sigmas) == 10000 and math.isclose(float(ms.sigma_min), flux(1e-4, 0.63), rel_tol=1e-5)
    assert np.allclose(schedules.calculate(ms, "simple", 4).tolist(),
                       [flux(t, 0.63) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0], atol=1e-6)
    assert math.isclose(ms.percent_to_sigma(0.25), flux(0.75, 0.63), rel_tol=1e-6)
    assert float(ms.timestep(torch.tensor(0.4))) == pytest.approx(0.4)  # Flux's timestep is sigma


def test_flux_simple_is_diffusers_dynamic_shifting():
    from diffusers import FlowMatchEulerDiscreteScheduler

    mu = flux_shift(1.15, 0.5, 768, 1024)
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sch.set_timesteps(sigmas=np.linspace(1.0, 1 / 5, 5).tolist(), mu=mu)  # as FluxPipeline does
    assert np.allclose(schedules.calculate(FluxSampling(mu), "simple", 5).numpy(), sch.sigmas.numpy(), atol=1e-6)


def test_flow_prediction_noise_scaling_and_percent():
    ms = FlowSampling(3.0)
    sigma = torch.tensor([0.25, 0.8])
    x, v = torch.randn(2, 16, 2, 2), torch.randn(2, 16, 2, 2)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.equal(ms.calculate_input(sigma, x), x)
    assert torch.allclose(ms.calculate_denoised(sigma, v, x), x - s * v)
    latent, noise = torch.randn(2, 16, 2, 2), torch.randn(2, 16, 2, 2)
    assert torch.allclose(ms.noise_scaling(sigma, noise, latent), s * noise + (1 - s) * latent)
    # at sigma 1 the start is the noise itself, not sqrt(1 + sigma^2) times it
    assert torch.equal(ms.noise_scaling(torch.tensor(1.0), noise, latent, max_denoise=True), noise)
    assert torch.allclose(ms.timestep(sigma), sigma * 1000)
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert math.isclose(ms.percent_to_sigma(0.5), 0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    aura = FlowSampling(1.73, multiplier=1.0)
    assert torch.allclose(aura.timestep(sigma), sigma)
    assert math.isclose(float(aura.sigmas[499]), sd3(0.5, 1.73), rel_tol=1e-6)


def test_rf_ancestral_step_follows_its_formula():
    """One euler_ancestral step of a flow from sigma 1 to 0.5 (eta 1): down to 0.25, rescaled by
    alpha_next / alpha_down = 0.5 / 0.75, renoised by sqrt(0.5^2 - 0.25^2 * 0.5^2 / 0.75^2)."""
    from flowrun.diffusion import flow_samplers
    from flowrun.diffusion.noise import SeedNoise

    x, d = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    sigmas = torch.tensor([1.0, 0.5])
    out = flow_samplers.sample_euler_ancestral(lambda x_, s_: d, x, sigmas, SeedNoise([5]), lambda i: None)
    fresh = SeedNoise([5]).gaussian(x)(sigmas[0], sigmas[1])
    expected = (0.5 / 0.75) * (0.25 * x + 0.75 * d) + fresh * math.sqrt(0.25 - 0.0625 * 0.25 / 0.5625)
    assert torch.allclose(out, expected, atol=1e-6)
    ms = FlowSampling(3.0)
    assert samplers.get("euler_ancestral", ms) is flow_samplers.sample_euler_ancestral
    assert samplers.get("euler_ancestral", ms.base) is samplers.sample_euler_ancestral
    # the SDE solvers step in log((1 - sigma) / sigma) from just below sigma 1
    snr = samplers.FlowSnr(ms.percent_to_sigma)
    assert float(snr.lam(torch.tensor(0.25))) == pytest.approx(math.log(3.0))
    assert float(snr.offset_first(torch.tensor([1.0, 0.5, 0.0]))[0]) == pytest.approx(sd3(1 - 1e-4, 3.0))


def test_flow_midpoints_are_taken_in_log_snr():
    """The second-order samplers' midpoints on a flow, worked out by hand: log((1 - s) / s) is -ln 4 at 0.8 and
    ln 4 at 0.2, so the half-way point in it is sigma 0.5 (dpmpp_sde from 0.8 to 0.2; dpmpp_2s_ancestral from
    0.8 towards 0.4, which at eta 1 steps down to 0.2 first)."""
    from flowrun.diffusion.noise import SeedNoise

    ms = FlowSampling(3.0)
    for name, sigmas in (("dpmpp_sde", [0.8, 0.2, 0.0]), ("dpmpp_2s_ancestral", [0.8, 0.4, 0.0])):
        seen, d = [], torch.randn(1, 4, 2, 2)

        def const(x, sigma):
            seen.append(round(float(sigma[0]), 6))
            return d

        out = samplers.get(name, ms)(const, torch.randn(1, 4, 2, 2), torch.tensor(sigmas), SeedNoise([1]),
                                     lambda i: None)
        assert seen[:2] == [0.8, 0.5] and torch.allclose(out, d, atol=1e-6), (name, seen)


class _PointMass(torch.nn.Module):
    """A 'UNet' that knows the data is one latent L: its velocity noise - L = (x - L) / sigma, given the
    timestep 1000 sigma. On a flow every step's prediction is then L exactly."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.config = type("Config", (), {"out_channels": target.shape[1], "in_channels": target.shape[1]})()
        self.seen = []

    def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False, **kw):
        self.seen.append(t.clone())
        return ((x - self.target) / (t.view(-1, 1, 1, 1) / 1000),)


def _flow_model(tiny_bundle, target):
    import dataclasses

    model = tiny_bundle[0]
    return dataclasses.replace(model, unet=_PointMass(target), sampling=FlowSampling(3.0), latent_format=None)


# samplers that step in log-SNR and so move a first sigma of 1 to the sigma at 0.01 % (ComfyUI's
# offset_first_sigma_for_snr)
OFFSET_FIRST_SIGMA = {"dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
                      "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "er_sde", "exp_heun_2_x0",
                      "exp_heun_2_x0_sde", "seeds_2", "seeds_3"}


@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_every_sampler_lands_on_the_flow_prediction(tiny_bundle, sampler_name):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample
    from flowrun.values import Latent

    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    model = _flow_model(tiny_bundle, target)
    cond = encode(tiny_bundle[1], "x")
    out = ksample(model, seed=2, steps=4, cfg=1.0, sampler_name=sampler_name, scheduler="simple", positive=cond,
                  negative=cond, latent=Latent(torch.zeros(1, 4, 4, 4))).samples
    expected = target
    if sampler_name in ("dpm_fast", "dpm_adaptive"):  # they stop at the last non-zero sigma, exactly on the
        # point mass's ODE path
        from flowrun.diffusion import schedules
        from flowrun.diffusion.noise import initial_noise

        sigma_min = float(schedules.sampler_sigmas(model.sampling, "simple", sampler_name, 4)[-2])
        expected = target + sigma_min * (initial_noise(torch.zeros(1, 4, 4, 4), 2) - target)
    # UniPC stops at sigma 0.001 instead of 0 (as ComfyUI's), so a trace of noise is left
    assert torch.allclose(model.latent_in(out), expected, atol=1e-2 if sampler_name.startswith("uni_pc") else 1e-4)
    assert float(model.unet.seen[0][0]) == pytest.approx(1000.0 if sampler_name not in OFFSET_FIRST_SIGMA
                                                         else 1000 * sd3(1 - 1e-4, 3.0), rel=1e-5)


def test_split_sampling_of_a_flow_equals_the_whole(tiny_bundle):
    """KSamplerAdvanced's halves (the first returning its leftover noise) give the one-piece result: the
    half-way latent is kept as latent / (1 - sigma) and noised back by (1 - sigma) (inverse_noise_scaling)."""
    import dataclasses

    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample
    from flowrun.values import Latent

    model, clip, _ = tiny_bundle
    flow = dataclasses.replace(model, sampling=FlowSampling(3.0))
    pos, neg = encode(clip, "a red circle"), encode(clip, "")
    common = dict(seed=4, steps=4, cfg=4.0, sampler_name="euler", scheduler="normal", positive=pos, negative=neg)
    whole = ksample(flow, latent=Latent(torch.zeros(1, 4, 8, 8)), **common).samples
    half = ksample(flow, latent=Latent(torch.zeros(1, 4, 8, 8)), last_step=2, **common)
    rest = ksample(flow, latent=half, add_noise=False, start_step=2, **common).samples
    assert torch.allclose(whole, rest, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole, ksample(model, latent=Latent(torch.zeros(1, 4, 8, 8)), **common).samples,
                              atol=1e-2)


def test_model_sampling_nodes(tiny_bundle):
    model = tiny_bundle[0]
    sd3_model = _node("ModelSamplingSD3", model, shift=3.0)
    assert isinstance(sd3_model.sampling, FlowSampling) and sd3_model.sampling.multiplier == 1000.0
    assert math.isclose(float(sd3_model.sampling.sigmas[749]), 0.9, rel_tol=1e-6)
    assert model.sampling.prediction_type == "epsilon"  # the input model is left as it was
    aura = _node("ModelSamplingAuraFlow", model, shift=1.73).sampling
    assert aura.multiplier == 1.0 and aura.shift == 1.73
    fx = _node("ModelSamplingFlux", model, max_shift=1.15, base_shift=0.5, width=512, height=512).sampling
    assert isinstance(fx, FluxSampling) and math.isclose(fx.mu, 0.63)
    # ModelSamplingDiscrete goes back to the model's own discrete schedule
    back = _node("ModelSamplingDiscrete", sd3_model, sampling="eps", zsnr=False).sampling
    assert torch.equal(back.sigmas, model.sampling.sigmas)
    latent = _node("EmptySD3LatentImage", width=64, height=48, batch_size=2)
    assert latent.samples.shape == (2, 16, 6, 8) and not latent.samples.any()


def test_comfyui_flow_sampling_graph_imports_and_runs(cli, tiny_models, tmp_path):
    """ModelSamplingSD3 and ModelSamplingFlux in a ComfyUI graph (on the toy SD1 model, as ComfyUI allows):
    it imports, runs, and the two schedules give two different images."""
    import json

    from PIL import Image

    from conftest import ROOT

    source = ROOT / "tests" / "comfyui" / "flow-sampling-api.json"
    assert cli("import", source, "--out", tmp_path / "wf.yaml").code == 0
    text = (tmp_path / "wf.yaml").read_text()
    assert "type: ModelSamplingSD3" in text and "max_shift: 1.15" in text
    r = cli("run", tmp_path / "wf.yaml", "--models-dir", tiny_models, "--out", tmp_path / "o", "--device", "cpu")
    assert r.code == 0, r.err
    with Image.open(tmp_path / "o" / "sd3-shift.png") as a, Image.open(tmp_path / "o" / "flux-shift.png") as b:
        assert a.size == b.size == (64, 64)
        # each image carries the part of the graph that made it
        assert {n["class_type"] for n in json.loads(a.info["prompt"]).values()} >= {"ModelSamplingSD3", "KSampler"}
        assert "ModelSamplingFlux" in {n["class_type"] for n in json.loads(b.info["prompt"]).values()}
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() > 8
