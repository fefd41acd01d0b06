"""Schedulers (fixed numbers), samplers (against exact solutions), KSampler on the tiny model, and the
equivalence of euler + normal with diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowrun.values import Latent

from flowrun.diffusion import samplers, schedules
from flowrun.diffusion.ksampler import ksample
from flowrun.diffusion.noise import SeedNoise, initial_noise
from flowrun.diffusion.model import ModelSampling
from flowrun.diffusion.names import SAMPLERS, SCHEDULERS

# ComfyUI's schedules for SD's discrete sigmas at 6 steps (ddim_uniform's stride 1000 // 6 gives 7 steps there too)
EXPECTED = {
    "normal": [14.6146, 5.0924, 2.2797, 1.1629, 0.5712, 0.0292, 0.0],
    "karras": [14.6146, 6.0822, 2.2322, 0.6926, 0.1698, 0.0292, 0.0],
    "exponential": [14.6146, 4.2151, 1.2157, 0.3506, 0.1011, 0.0292, 0.0],
    "sgm_uniform": [14.6146, 5.9489, 2.9183, 1.6156, 0.9324, 0.4936, 0.0],
    "simple": [14.6146, 5.9631, 2.9183, 1.6129, 0.9324, 0.4924, 0.0],
    "ddim_uniform": [14.4386, 5.9064, 2.9071, 1.6129, 0.9324, 0.4947, 0.0413, 0.0],
    "beta": [14.6146, 8.7078, 3.6758, 1.6183, 0.7624, 0.3235, 0.0],
    "linear_quadratic": [14.6146, 14.4929, 14.3711, 14.2493, 12.5848, 7.8351, 0.0],
    "kl_optimal": [14.6146, 2.6329, 1.2948, 0.7116, 0.3356, 0.0292, 0.0],
}


def test_model_sampling_is_sds_schedule():
    ms = ModelSampling()
    assert float(ms.sigma_min) == pytest.approx(0.029167, abs=1e-6)
    assert float(ms.sigma_max) == pytest.approx(14.614641, abs=1e-5)
    assert int(ms.timestep(ms.sigma_max)) == 999 and int(ms.timestep(ms.sigma_min)) == 0
    # log-sigma interpolation between discrete timesteps
    mid = float(ms.sigma(torch.tensor(499.5)))
    assert mid == pytest.approx(math.exp((math.log(ms.sigmas[499]) + math.log(ms.sigmas[500])) / 2), rel=1e-6)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedule_fixed_numbers(name):
    got = schedules.calculate(ModelSampling(), name, 6)
    assert [round(float(v), 4) for v in got] == EXPECTED[name]
    assert float(got[-1]) == 0.0 and all(a > b for a, b in zip(got[:-1], got[1:]))


def test_karras_and_exponential_match_diffusers():
    from diffusers import EulerDiscreteScheduler

    ms = ModelSampling()
    for flag, ours in (("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential")):
        sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **{flag: True})
        sched.set_timesteps(10)
        assert torch.allclose(sched.sigmas.float(), schedules.calculate(ms, ours, 10), rtol=1e-4, atol=1e-4)


def test_penultimate_sigma_dropped_for_dpm2_and_unipc():
    ms = ModelSampling()
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        s = schedules.sampler_sigmas(ms, "normal", sampler, 6)
        full = schedules.calculate(ms, "normal", 7)
        assert len(s) == 7 and torch.equal(s, torch.cat([full[:-2], full[-1:]]))
    assert torch.equal(schedules.sampler_sigmas(ms, "normal", "euler", 6), schedules.calculate(ms, "normal", 6))


def test_denoise_below_one_keeps_the_tail_of_a_longer_schedule():
    ms = ModelSampling()
    s = schedules.sampler_sigmas(ms, "karras", "euler", 4, denoise=0.5)
    assert torch.equal(s, schedules.calculate(ms, "karras", 8)[-5:])
    assert [round(float(v), 4) for v in s] == [0.8289, 0.3211, 0.1072, 0.0292, 0.0]
    assert len(schedules.sampler_sigmas(ms, "normal", "euler", 4, denoise=0.0)) == 0


# Data ~ N(0, c): the ideal denoiser is D(x, sigma) = x c / (c + sigma^2), and the probability-flow ODE
# from sigma_max to 0 has the exact solution x_0 = x_T sqrt(c / (c + sigma_max^2)). Deterministic samplers
# must land there; stochastic ones must produce samples of variance c.
C = 0.25


def gaussian_denoiser(x, sigma):
    s = sigma.view(-1, *([1] * (x.ndim - 1)))
    return x * C / (C + s ** 2)


DETERMINISTIC = ["euler", "euler_cfg_pp", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "dpmpp_2m_cfg_pp", "ipndm",
                 "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "gradient_estimation",
                 "gradient_estimation_cfg_pp", "exp_heun_2_x0", "dpm_fast", "dpm_adaptive", "ddim", "uni_pc",
                 "uni_pc_bh2"]
STOCHASTIC = ["euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
              "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
              "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
              "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "exp_heun_2_x0_sde", "seeds_2",
              "seeds_3"]


def _solve(name, steps, x=None, seed=0):
    ms = ModelSampling()
    sigmas = schedules.sampler_sigmas(ms, "karras", name, steps)
    x_t = x if x is not None else torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    start = x_t * sigmas[0]
    denoiser, options = gaussian_denoiser, {}
    if samplers.needs_uncond(name):  # CFG++ without guidance: the unconditional prediction is the prediction
        from flowrun.diffusion.cfg_pp import UncondSink

        options["uncond"] = sink = UncondSink()

        def denoiser(x, sigma):
            sink.value = gaussian_denoiser(x, sigma)
            return sink.value

    out = samplers.get(name)(denoiser, start, sigmas, SeedNoise([seed]), lambda i: None, **options)
    return out, x_t, sigmas


def test_every_sampler_name_is_covered():
    assert sorted(DETERMINISTIC + STOCHASTIC) == sorted(SAMPLERS)


# heunpp2's weights and gradient_estimation's extrapolated derivative keep them near Euler's accuracy
FIRST_ORDER = {"euler", "euler_cfg_pp", "heunpp2", "gradient_estimation", "gradient_estimation_cfg_pp", "ddim"}
# second order, but starting from an Euler step (res_multistep: 0.012 at 30 karras steps, 0.0017 at 100)
# or ending with a plain jump to the prediction (exp_heun_2_x0: 0.0118 at 30); dpm_adaptive's accuracy
# follows its rtol (0.05), not the number of steps (0.044)
LOOSER = {"res_multistep": 0.015, "res_multistep_cfg_pp": 0.015, "exp_heun_2_x0": 0.015, "dpm_adaptive": 0.06}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_solve_the_ode(name):
    steps, tol = (100, 0.035) if name in FIRST_ORDER else (30, LOOSER.get(name, 0.01))
    out, x_t, sigmas = _solve(name, steps)
    exact = x_t * sigmas[0] * math.sqrt(C / (C + float(sigmas[0]) ** 2))
    assert float((out - exact).abs().max()) < tol


def test_heun_is_more_accurate_than_euler():
    errs = {}
    for name in ("euler", "heun", "dpmpp_2m"):
        out, x_t, sigmas = _solve(name, 30)
        exact = x_t * sigmas[0] * math.sqrt(C / (C + float(sigmas[0]) ** 2))
        errs[name] = float((out - exact).abs().max())
    # second-order methods: an order of magnitude closer than Euler at the same number of steps
    assert errs["heun"] < errs["euler"] / 5 and errs["dpmpp_2m"] < errs["euler"] / 5


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_sample_the_data_distribution(name):
    x = torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    # first order: slower to converge
    steps = 100 if name in ("euler_ancestral", "euler_ancestral_cfg_pp", "ddpm") else 30
    out, _, sigmas = _solve(name, steps, x=x, seed=123)
    expected = C
    if name == "lcm":
        # LCM jumps to D(x) and re-noises to the next sigma; with a posterior-mean denoiser the variance
        # follows v' = v (c / (c + s^2))^2 + s_next^2 instead of staying on the data distribution
        v = float(sigmas[0]) ** 2
        for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            v = v * (C / (C + s * s)) ** 2 + s_next ** 2
        expected = v
    assert float(out.var()) == pytest.approx(expected, rel=0.15)
    again, _, _ = _solve(name, steps, x=x, seed=123)
    assert torch.equal(out, again)  # per-step noise comes from the seed
    other, _, _ = _solve(name, steps, x=x, seed=124)
    assert not torch.equal(out, other)


def test_initial_noise_is_cpu_randn_of_the_seed():
    latent = torch.zeros(2, 4, 8, 8)
    expected = torch.randn(2, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(99))
    assert torch.equal(initial_noise(latent, 99), expected)
    # batch_index picks the i-th draw, so one image of a batch can be re-rendered alone
    assert torch.equal(initial_noise(latent[:1], 99, [1]), expected[1:2])


def _conds(clip, text):
    from flowrun.diffusion.clip import encode

    return encode(clip, text)


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    model, clip, vae = tiny_bundle
    return model, _conds(clip, "a red circle"), _conds(clip, "")


def _sample_twice(model, pos, neg, name, scheduler):
    latent = Latent(torch.zeros(1, 4, 8, 8))
    kw = dict(seed=3, steps=4, cfg=5.0, sampler_name=name, scheduler=scheduler, positive=pos, negative=neg,
              latent=latent)
    out = ksample(model, **kw).samples
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all(), (name, scheduler)
    assert torch.equal(out, ksample(model, **kw).samples), (name, scheduler)


def test_every_sampler_on_a_model(tiny):
    """All 42 samplers on the tiny model, finite and repeatable (every pairing with every scheduler took
    about 105 s; the schedulers get their own test below)."""
    model, pos, neg = tiny
    for name in SAMPLERS:
        _sample_twice(model, pos, neg, name, "karras")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_drives_samplers_of_each_kind(tiny, scheduler):
    """Each scheduler with a first-order, a multistep and a multistep SDE sampler."""
    model, pos, neg = tiny
    for name in ("euler", "dpmpp_2m", "dpmpp_2m_sde"):
        _sample_twice(model, pos, neg, name, scheduler)


def test_progress_reports_each_step(tiny):
    model, pos, neg = tiny
    seen = []
    ksample(model, seed=1, steps=5, cfg=3.0, sampler_name="heun", scheduler="normal", positive=pos, negative=neg,
            latent=Latent(torch.zeros(1, 4, 8, 8)), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_img2img_batch_and_denoise(tiny):
    model, pos, neg = tiny
    start = Latent(torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    kw = dict(seed=5, steps=6, cfg=4.0, sampler_name="euler", scheduler="normal", positive=pos, negative=neg)
    none = ksample(model, latent=start, denoise=0.0, **kw).samples
    assert torch.equal(none, start.samples)
    light = ksample(model, latent=start, denoise=0.3, **kw).samples
    heavy = ksample(model, latent=start, denoise=0.9, **kw).samples
    d_light = float((light - start.samples).abs().mean())
    d_heavy = float((heavy - start.samples).abs().mean())
    assert light.shape == (3, 4, 8, 8) and 0 < d_light < d_heavy
    single = ksample(model, latent=Latent(start.samples[:1]), denoise=0.3, **kw).samples
    assert not torch.allclose(single, light[1:2])  # each image of the batch has its own noise


def test_ksampler_advanced_split_equals_one_run(tiny):
    model, pos, neg = tiny
    latent = Latent(torch.zeros(1, 4, 8, 8))
    kw = dict(seed=8, steps=10, cfg=5.0, sampler_name="euler", scheduler="karras", positive=pos, negative=neg)
    whole = ksample(model, latent=latent, **kw).samples
    half = ksample(model, latent=latent, start_step=0, last_step=5, force_full_denoise=False, **kw)
    rest = ksample(model, latent=half, add_noise=False, start_step=5, last_step=10000, force_full_denoise=True, **kw)
    assert torch.allclose(rest.samples, whole, atol=1e-4)
    assert not torch.allclose(half.samples, whole, atol=1e-2)


def test_euler_normal_matches_diffusers_pipeline(tiny_models, tmp_path):
    """The same checkpoint, prompt, seed, cfg and steps through StableDiffusionPipeline with
    EulerDiscreteScheduler(timestep_spacing="linspace") and through flowrun: within one 8-bit level."""
    import tiny_model
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from flowrun import api
    from flowrun.diffusion.checkpoint import tokenizer
    from flowrun.settings import Settings
    from PIL import Image

    _, unet, vae, text = tiny_model.build(0)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="linspace", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt, seed, cfg, steps = "a red circle on a white background", 42, 7.0, 20
    theirs = pipe(prompt, negative_prompt="", height=64, width=64, num_inference_steps=steps, guidance_scale=cfg,
                  generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    from conftest import ROOT

    resolved = api.load(ROOT / "workflows" / "txt2img.yaml")
    result = api.run(resolved, Settings(out_dir=tmp_path, use_cache=False, models_dirs=(str(tiny_models),), device="cpu"))
    ours = np.asarray(Image.open(result.files[0])).astype(int)
    diff = np.abs(ours - np.clip(255 * theirs, 0, 255).astype(np.uint8).astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
