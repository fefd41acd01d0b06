"""The samplers beyond the first fifteen: each against its update rule written out here on a small
analytic denoiser (a hand-stepped trajectory), the *_gpu names against their plain ones, and every name
through validation and the workflow schema."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowrun.diffusion import samplers
from flowrun.diffusion.flow_sampling import FlowSampling
from flowrun.diffusion.names import SAMPLERS
from flowrun.diffusion.noise import SeedNoise

C = 0.25  # data ~ N(0, C): the ideal denoiser of a variance-exploding model is x C / (C + sigma^2)


def gaussian_denoiser(x, sigma):
    return x * C / (C + sigma.view(-1, 1, 1, 1) ** 2)


def flow_denoiser(x, sigma):
    """The ideal denoiser of data ~ N(0, C) under x = (1 - sigma) latent + sigma noise."""
    s = sigma.view(-1, 1, 1, 1)
    return x * (1 - s) * C / ((1 - s) ** 2 * C + s ** 2)


SIGMAS = torch.tensor([8.0, 3.0, 1.2, 0.5, 0.15, 0.0])
FLOW_SIGMAS = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])


def _start(sigma0: float) -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11)) * sigma0


def _run(name, x, sigmas, denoiser=gaussian_denoiser, sampling=None, seed=5, **kw):
    return samplers.get(name, sampling)(denoiser, x.clone(), sigmas.clone(), SeedNoise([seed]), lambda i: None, **kw)


# --- *_gpu: the plain samplers, the noise drawn on the CPU ------------------------------------------------

@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_gpu_names_are_the_plain_samplers(name):
    x = _start(8.0)
    assert torch.equal(_run(name + "_gpu", x, SIGMAS), _run(name, x, SIGMAS))
    flow = FlowSampling(3.0)
    fx = _start(1.0)
    assert torch.equal(_run(name + "_gpu", fx, FLOW_SIGMAS, flow_denoiser, flow),
                       _run(name, fx, FLOW_SIGMAS, flow_denoiser, flow))
    assert not torch.equal(_run(name + "_gpu", x, SIGMAS, seed=6), _run(name, x, SIGMAS))


# --- every name: validation and the schema -----------------------------------------------------------------

KSAMPLER_WORKFLOW = """
version: 1
nodes:
  ckpt: {type: CheckpointLoaderSimple, with: {ckpt_name: model.safetensors}}
  pos: {type: CLIPTextEncode, with: {text: a cat}, in: {clip: ckpt.clip}}
  latent: {type: EmptyLatentImage, with: {width: 64, height: 64}}
  sample:
    type: KSampler
    with: {seed: 1, steps: 2, cfg: 4.0, sampler_name: %s, scheduler: normal}
    in: {model: ckpt.model, positive: pos, negative: pos, latent_image: latent}
  select: {type: KSamplerSelect, with: {sampler_name: %s}}
  custom:
    type: SamplerCustom
    with: {noise_seed: 1, cfg: 4.0}
    in: {model: ckpt.model, positive: pos, negative: pos, sampler: select, sigmas: sigmas, latent_image: latent}
  sigmas: {type: BasicScheduler, with: {steps: 2}, in: {model: ckpt.model}}
  decode: {type: VAEDecode, in: {samples: sample, vae: ckpt.vae}}
  decode_custom: {type: VAEDecode, in: {samples: custom.output, vae: ckpt.vae}}
  save: {type: SaveImage, in: {images: decode}}
  save_custom: {type: SaveImage, in: {images: decode_custom}}
"""


# ComfyUI's sampler list (comfy/samplers.py KSAMPLER_NAMES, then ddim, uni_pc, uni_pc_bh2), December 2026
COMFYUI_ORDER = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]


def test_sampler_names_are_comfyuis_in_its_order():
    assert list(SAMPLERS) == [n for n in COMFYUI_ORDER if n in SAMPLERS]
    assert set(SAMPLERS) <= set(COMFYUI_ORDER)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_name_validates(workflow, name):
    from flowrun import api

    api.load(workflow(KSAMPLER_WORKFLOW % (name, name)))


def test_an_unknown_sampler_name_is_refused(workflow):
    from flowrun import api
    from flowrun.errors import WorkflowInvalid

    with pytest.raises(WorkflowInvalid) as info:
        api.load(workflow(KSAMPLER_WORKFLOW % ("euler_unknown", "euler")))
    assert [(p.node, p.field) for p in info.value.problems] == [("sample", "sampler_name")]


def test_the_schema_lists_every_sampler_in_comfyuis_order():
    from flowrun import api

    schema = json.loads(api.schema_text())
    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "enum" in node and "euler" in node["enum"]:
                enums.append(node["enum"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert enums and all(e == list(SAMPLERS) for e in enums)


# --- CFG++: a guided denoiser that leaves its unconditional prediction in the sink ------------------------

C_UNCOND = 0.6
CFG = 3.0


def _ideal(x, sigma, c, flow):
    s = sigma.view(-1, 1, 1, 1) if torch.is_tensor(sigma) else sigma
    if flow:
        return x * (1 - s) * c / ((1 - s) ** 2 * c + s ** 2)
    return x * c / (c + s ** 2)


def _guided(flow=False, cfg=CFG, c_uncond=C_UNCOND):
    """(denoiser, sink): D = U + (P - U) cfg over two ideal denoisers of different data variances."""
    from flowrun.diffusion.cfg_pp import UncondSink

    sink = UncondSink()

    def run(x, sigma):
        cond, uncond = _ideal(x, sigma, C, flow), _ideal(x, sigma, c_uncond, flow)
        sink.value = uncond
        return uncond + (cond - uncond) * cfg

    return run, sink


def _both(x, s, flow=False):
    """(D, U) of the test's guided denoiser at a float sigma."""
    cond, uncond = _ideal(x, s, C, flow), _ideal(x, s, C_UNCOND, flow)
    return uncond + (cond - uncond) * CFG, uncond


def _cpu_draws(x, seed=5):
    """The ancestral samplers' per-step noise: CPU randn of seed + 1, one draw per noised step."""
    gen = torch.Generator().manual_seed(seed + 1)
    return lambda: torch.randn(x.shape, generator=gen)


def _cfg_pp(name, x, sigmas, flow=False, **kw):
    denoiser, sink = _guided(flow)
    sampling = FlowSampling(3.0) if flow else None
    return _run(name, x, sigmas, denoiser, sampling, uncond=sink, **kw)


def _ancestral_up_down(s, s_next, eta=1.0):
    up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


def test_euler_cfg_pp_steps_along_the_unconditional_direction():
    x = _start(8.0)
    ref = x.clone()
    s = SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        d, u = _both(ref, a)
        ref = d + (b / a) * (ref - u)  # back to noise along the unconditional prediction
    assert torch.allclose(_cfg_pp("euler_cfg_pp", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_euler_cfg_pp_without_guidance_is_euler():
    x = _start(8.0)
    denoiser, sink = _guided(cfg=1.0, c_uncond=C)
    same = _run("euler_cfg_pp", x, SIGMAS, denoiser, uncond=sink)
    assert torch.allclose(same, _run("euler", x, SIGMAS), rtol=1e-5, atol=1e-6)


def test_euler_ancestral_cfg_pp_follows_its_formula():
    x = _start(8.0)
    draw = _cpu_draws(x)
    ref = x.clone()
    s = SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        d, u = _both(ref, a)
        if b == 0:
            ref = d
            continue
        down, up = _ancestral_up_down(a, b)
        ref = d + down * (ref - u) / a + draw() * up
    assert torch.allclose(_cfg_pp("euler_ancestral_cfg_pp", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_euler_ancestral_cfg_pp_of_a_flow_scales_by_alpha():
    sigmas = torch.tensor([0.95, 0.7, 0.4, 0.15, 0.0])
    x = _start(1.0)
    draw = _cpu_draws(x)
    ref = x.clone()
    s = sigmas.tolist()
    for a, b in zip(s[:-1], s[1:]):
        d, u = _both(ref, a, flow=True)
        if b == 0:
            ref = d
            continue
        alpha, alpha_next = 1 - a, 1 - b
        down, up = _ancestral_up_down(a / alpha, b / alpha_next)
        ref = alpha_next * d + alpha_next * down * (ref - alpha * u) / a + alpha_next * draw() * up
    assert torch.allclose(_cfg_pp("euler_ancestral_cfg_pp", x, sigmas, flow=True), ref, rtol=1e-5, atol=1e-5)
    # from sigma 1 (alpha 0) the step stays finite, as ComfyUI's
    assert torch.isfinite(_cfg_pp("euler_ancestral_cfg_pp", x, FLOW_SIGMAS, flow=True)).all()
    assert torch.isfinite(_cfg_pp("euler_cfg_pp", x, FLOW_SIGMAS, flow=True)).all()


def test_dpmpp_2m_cfg_pp_follows_its_formula():
    x = _start(8.0)
    ref, old_u = x.clone(), None
    s = SIGMAS.tolist()
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        d, u = _both(ref, a)
        ratio = b / a  # e^-h
        if old_u is None or b == 0:
            ref = d - ratio * u + ratio * ref
        else:
            r = math.log(s[i - 1] / a) / math.log(a / b)  # h_last / h
            ref = d - ratio * u + (1 - ratio) / (2 * r) * (d - old_u) + ratio * ref
        old_u = u
    assert torch.allclose(_cfg_pp("dpmpp_2m_cfg_pp", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_dpmpp_2s_ancestral_cfg_pp_follows_its_formula():
    x = _start(8.0)
    draw = _cpu_draws(x)
    ref = x.clone()
    s = SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        d, u = _both(ref, a)
        down, up = _ancestral_up_down(a, b)
        if down == 0:
            ref = u
        else:
            mid = math.sqrt(a * down)  # the midpoint in log sigma
            _, u2 = _both((mid / a) * ref + (1 - mid / a) * u, mid)
            ref = (down / a) * ref + (1 - down / a) * u2
        if b > 0:
            ref = ref + draw() * up
        ref = ref + (d - u)
    assert torch.allclose(_cfg_pp("dpmpp_2s_ancestral_cfg_pp", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_dpmpp_2s_ancestral_cfg_pp_of_a_flow_follows_its_formula():
    x = _start(1.0)
    draw = _cpu_draws(x)
    ref = x.clone()
    s = FLOW_SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        d, u = _both(ref, a, flow=True)
        down = b * (1 + (b / a - 1))  # eta 1
        if b == 0:
            ref = u
        else:
            if a == 1.0:
                mid = 0.9999
            else:
                lam = (math.log((1 - a) / a) + math.log((1 - down) / down)) / 2
                mid = 1 / (1 + math.exp(lam))
            _, u2 = _both((mid / a) * ref + (1 - mid / a) * u, mid, flow=True)
            ref = (down / a) * ref + (1 - down / a) * u2
            renoise = math.sqrt(b ** 2 - down ** 2 * (1 - b) ** 2 / (1 - down) ** 2)
            ref = (1 - b) / (1 - down) * ref + draw() * renoise
        ref = ref + (1 - b) * (d - u)
    got = _cfg_pp("dpmpp_2s_ancestral_cfg_pp", x, FLOW_SIGMAS, flow=True)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_cfg_pp_runs_the_negative_prompt_at_cfg_1(tiny_bundle):
    """ComfyUI turns its cfg-1 shortcut off for CFG++: the unconditional prediction steers even at cfg 1."""
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import ksample
    from flowrun.values import Latent

    model, clip, _ = tiny_bundle
    pos, neg, other = encode(clip, "a red circle"), encode(clip, ""), encode(clip, "a blue square")
    kw = dict(seed=3, steps=3, cfg=1.0, scheduler="normal", positive=pos, latent=Latent(torch.zeros(1, 4, 8, 8)))
    plain = ksample(model, sampler_name="euler", negative=neg, **kw).samples
    with_neg = ksample(model, sampler_name="euler_cfg_pp", negative=neg, **kw).samples
    with_other = ksample(model, sampler_name="euler_cfg_pp", negative=other, **kw).samples
    assert not torch.allclose(plain, with_neg) and not torch.allclose(with_neg, with_other)
    same = ksample(model, sampler_name="euler_cfg_pp", negative=pos, **kw).samples  # uncond = cond: Euler
    assert torch.allclose(same, plain, rtol=1e-5, atol=1e-3)


def test_cfg_pp_is_refused_with_a_dual_guider(tiny_bundle):
    from flowrun.diffusion.clip import encode
    from flowrun.diffusion.ksampler import guider_guide, sample
    from flowrun.values import Guider, Latent

    model, clip, _ = tiny_bundle
    cond = encode(clip, "x")
    guider = Guider(model=model, positive=cond, negative=cond, middle=cond, cfg=2.0, cfg2=2.0, style="dual")
    with pytest.raises(ValueError, match="DualCFGGuider"):
        sample(model, guider_guide(guider), "euler_cfg_pp", torch.tensor([14.6, 1.0, 0.0]), SeedNoise([1]),
               Latent(torch.zeros(1, 4, 8, 8)))


# --- ddpm, heunpp2, ipndm, ipndm_v, deis, dpmpp_2m_sde_heun ----------------------------------------------

def test_ddpm_is_the_ddpm_posterior_step_in_vp_space():
    x = _start(8.0)
    draw = _cpu_draws(x)
    ref = x.clone()
    s = SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        eps = (ref - gaussian_denoiser(ref, torch.tensor([a]))) / a
        abar, abar_prev = 1 / (1 + a * a), 1 / (1 + b * b)
        alpha = abar / abar_prev
        mean = (ref * math.sqrt(abar) - (1 - alpha) / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
        if b > 0:
            mean = mean + math.sqrt((1 - alpha) * (1 - abar_prev) / (1 - abar)) * draw()
            ref = mean / math.sqrt(abar_prev)
        else:
            ref = mean
    assert torch.allclose(_run("ddpm", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_heunpp2_follows_its_formula():
    x = _start(8.0)
    s = SIGMAS.tolist()

    def slope(v, sigma):
        return (v - gaussian_denoiser(v, torch.tensor([sigma]))) / sigma

    ref = x.clone()
    for i in range(len(s) - 1):
        d, dt = slope(ref, s[i]), s[i + 1] - s[i]
        if i + 1 == len(s) - 1:
            ref = ref + d * dt
        elif i + 2 == len(s) - 1:
            d2 = slope(ref + d * dt, s[i + 1])
            w = s[i + 1] / (2 * s[0])
            ref = ref + ((1 - w) * d + w * d2) * dt
        else:
            x2 = ref + d * dt
            d2 = slope(x2, s[i + 1])
            d3 = slope(x2 + d2 * (s[i + 2] - s[i + 1]), s[i + 2])
            w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
            ref = ref + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    assert torch.allclose(_run("heunpp2", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def _adams_bashforth(x, sigmas, weights):
    """Adams–Bashforth over d = (x - D) / sigma with the given weights per order (newest derivative
    first), rising from Euler; the step into sigma 0 lands on the prediction."""
    ref, ds = x.clone(), []
    s = sigmas.tolist()
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        denoised = gaussian_denoiser(ref, torch.tensor([a]))
        ds.insert(0, (ref - denoised) / a)
        if b == 0:
            ref = denoised
            continue
        w = weights[min(len(weights), i + 1)]
        ref = ref + (b - a) * sum(c * d for c, d in zip(w, ds))
    return ref


AB = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def test_ipndm_uses_the_fixed_step_adams_bashforth_weights():
    x = _start(8.0)
    assert torch.allclose(_run("ipndm", x, SIGMAS), _adams_bashforth(x, SIGMAS, AB), rtol=1e-5, atol=1e-5)


def test_ipndm_v_weights_on_equal_steps():
    """On equal steps the variable-step weights are Adams–Bashforth's up to third order; the fourth-order
    formula (diff-solvers', which ComfyUI runs) gives (57, -65, 43, -11) / 24 there instead of AB4's."""
    even = torch.cat([torch.linspace(9.0, 1.0, 9), torch.zeros(1)])
    x = _start(9.0)
    weights = {**AB, 4: [57 / 24, -65 / 24, 43 / 24, -11 / 24]}
    assert torch.allclose(_run("ipndm_v", x, even), _adams_bashforth(x, even, weights), rtol=1e-5, atol=1e-5)
    assert torch.allclose(_run("ipndm_v", x, even, max_order=3), _run("ipndm", x, even, max_order=3),
                          rtol=1e-5, atol=1e-5)


def test_ipndm_v_second_order_weights_follow_the_step_ratio():
    x = _start(8.0)
    s = SIGMAS.tolist()
    ref, old = x.clone(), None
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        denoised = gaussian_denoiser(ref, torch.tensor([a]))
        d = (ref - denoised) / a
        if b == 0:
            ref = denoised
        elif old is None:
            ref = ref + (b - a) * d
        else:
            q = (b - a) / (a - s[i - 1])  # this step over the last one
            ref = ref + (b - a) * ((1 + q / 2) * d - q / 2 * old)
        old = d
    assert torch.allclose(_run("ipndm_v", x, SIGMAS, max_order=2), ref, rtol=1e-5, atol=1e-5)


def test_deis_coefficients_integrate_the_lagrange_basis_against_dsigma():
    """DEIS's weight -1/2 dlog(alpha)/dt / sqrt(alpha (1 - alpha)) is dsigma/dt of its VP schedule, so each
    coefficient is the integral over [sigma_n, sigma_n+1] of a Lagrange basis polynomial in t(sigma)."""
    from scipy import integrate

    from flowrun.diffusion.adams import deis_coefficients

    sigmas = torch.tensor([14.6, 6.1, 2.2, 0.69, 0.17, 0.03, 0.0])
    coefficients = deis_coefficients(sigmas, 3)
    b_min = math.log(80.0 ** 2 + 1) - 0.5 * 2 * (math.log(0.002 ** 2 + 1) / 1e-3 - math.log(80.0 ** 2 + 1)) / (1e-3 - 1)
    b_d = 2 * (math.log(0.002 ** 2 + 1) / 1e-3 - math.log(80.0 ** 2 + 1)) / (1e-3 - 1)

    def t_of(sigma):
        return (math.sqrt(b_min ** 2 + 2 * b_d * math.log(sigma ** 2 + 1)) - b_min) / b_d

    s = sigmas.tolist()
    for i in range(1, len(s) - 2):
        order = min(i + 1, 3)
        past = [t_of(s[i - k]) for k in range(order)]
        assert len(coefficients[i]) == order
        for j in range(order):
            def basis(sig, j=j):
                t = t_of(sig)
                return math.prod((t - past[k]) / (past[j] - past[k]) for k in range(order) if k != j)

            expected = integrate.quad(basis, s[i], s[i + 1])[0]
            assert float(coefficients[i][j]) == pytest.approx(expected, rel=2e-3, abs=1e-4), (i, j)
        assert float(sum(coefficients[i])) == pytest.approx(s[i + 1] - s[i], rel=2e-3)
    assert coefficients[0] == [] and coefficients[-1] == []  # Euler first and into sigma 0


def test_deis_steps_with_its_coefficients():
    from flowrun.diffusion.adams import deis_coefficients

    x = _start(8.0)
    coefficients = deis_coefficients(SIGMAS, 3)
    ref, ds = x.clone(), []
    s = SIGMAS.tolist()
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        ds.insert(0, (ref - gaussian_denoiser(ref, torch.tensor([a]))) / a)
        if i == 0 or b == 0:
            ref = ref + (b - a) * ds[0]
        else:
            ref = ref + sum(float(c) * d for c, d in zip(coefficients[i], ds))
    assert torch.allclose(_run("deis", x, SIGMAS), ref, rtol=1e-5, atol=1e-5)


def test_dpmpp_2m_sde_heun_follows_its_formula():
    x = _start(8.0)
    for name in ("dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"):
        assert torch.equal(_run(name, x, SIGMAS), _run("dpmpp_2m_sde", x, SIGMAS, solver_type="heun"))
    # without noise (eta 0): exponential-integrator steps with Heun's correction of the derivative
    ref, old, h_last = x.clone(), None, None
    s = SIGMAS.tolist()
    for a, b in zip(s[:-1], s[1:]):
        denoised = gaussian_denoiser(ref, torch.tensor([a]))
        if b == 0:
            ref = denoised
            break
        h = math.log(a / b)
        ref = (b / a) * ref + (1 - b / a) * denoised
        if old is not None:
            ref = ref + (1 - (1 - math.exp(-h)) / h) * (h / h_last) * (denoised - old)  # alpha_t = 1
        old, h_last = denoised, h
    assert torch.allclose(_run("dpmpp_2m_sde_heun", x, SIGMAS, eta=0.0), ref, rtol=1e-5, atol=1e-5)


# --- res_multistep, gradient_estimation, er_sde ---------------------------------------------------------

def _res_reference(x, sigmas, eta=0.0, cfg_pp=False):
    """RES's second-order multistep exponential integrator in log(1/sigma), written out: for a step of
    length h after one of length h_old, x' = e^-h x + h (b1 D + b2 D_old) with phi1 = (1 - e^-h) / h,
    phi2 = (phi1 - 1) / (-h), b2 = phi2 / c2, b1 = phi1 - b2, c2 = -h_old' / h."""
    draw = _cpu_draws(x)
    ref, old, old_down = x.clone(), None, None
    s = sigmas.tolist()
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        d, u = _both(ref, a) if cfg_pp else (gaussian_denoiser(ref, torch.tensor([a])), None)
        down, up = _ancestral_up_down(a, b, eta) if eta else (b, 0.0)
        if down == 0 or old is None:
            ref = d + (ref - u) / a * down if cfg_pp else ref + (ref - d) / a * (down - a)
        else:
            h = math.log(a / down)
            c2 = math.log(old_down / s[i - 1]) / h
            phi1 = (1 - math.exp(-h)) / h
            phi2 = (phi1 - 1) / -h
            b2 = phi2 / c2
            b1 = phi1 - b2
            if cfg_pp:
                ref = math.exp(-h) * (ref + d - u) + h * (b1 * u + b2 * old)
            else:
                ref = math.exp(-h) * ref + h * (b1 * d + b2 * old)
        if b > 0:
            draw_now = draw()
            ref = ref + draw_now * up
        old, old_down = (u if cfg_pp else d), down
    return ref


@pytest.mark.parametrize("name", ["res_multistep", "res_multistep_ancestral", "res_multistep_cfg_pp",
                                  "res_multistep_ancestral_cfg_pp"])
def test_res_multistep_follows_its_formula(name):
    x = _start(8.0)
    cfg_pp = name.endswith("_cfg_pp")
    expected = _res_reference(x, SIGMAS, eta=1.0 if "ancestral" in name else 0.0, cfg_pp=cfg_pp)
    got = _cfg_pp(name, x, SIGMAS) if cfg_pp else _run(name, x, SIGMAS)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg_pp", [False, True])
def test_gradient_estimation_follows_its_formula(cfg_pp):
    x = _start(8.0)
    ref, old_d = x.clone(), None
    s = SIGMAS.tolist()
    for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
        d, u = _both(ref, a) if cfg_pp else (gaussian_denoiser(ref, torch.tensor([a])), None)
        slope = (ref - (u if cfg_pp else d)) / a
        if b == 0:
            ref = d
        else:
            ref = d + slope * b if cfg_pp else ref + slope * (b - a)
            if i >= 1:
                ref = ref + (2.0 - 1) * (slope - old_d) * (b - a)  # ge_gamma 2
        old_d = slope
    got = _cfg_pp("gradient_estimation_cfg_pp", x, SIGMAS) if cfg_pp else _run("gradient_estimation", x, SIGMAS)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def _er_sde_reference(x, sigmas, flow=False):
    """ER-SDE-Solver-3 written out over er_lambda = sigma / alpha, its integrals as 200-point sums."""
    def scale(v):
        return v * (math.exp(v ** 0.3) + 10.0)

    denoise = (lambda v, sig: _ideal(v, sig, C, True)) if flow else (lambda v, sig: gaussian_denoiser(v, torch.tensor([sig])))
    s = sigmas.tolist()
    if flow and s[0] >= 1:
        s[0] = FlowSampling(3.0).percent_to_sigma(1e-4)
    lam = [(v / (1 - v) if flow else v) for v in s]
    draw = _cpu_draws(x)
    ref, old, old_dd = x.clone(), None, None
    for i in range(len(s) - 1):
        d = denoise(ref, s[i])
        if s[i + 1] == 0:
            ref = d
            break
        ls, lt = lam[i], lam[i + 1]
        alpha_s, alpha_t = s[i] / ls, s[i + 1] / lt
        r = scale(lt) / scale(ls)
        new = alpha_t / alpha_s * r * ref + alpha_t * (1 - r) * d
        if i >= 1:
            step = (ls - lt) / 200
            points = [lt + k * step for k in range(200)]
            integral = sum(1 / scale(p) for p in points) * step
            dd = (d - old) / (ls - lam[i - 1])
            new = new + alpha_t * ((lt - ls) + integral * scale(lt)) * dd
            if i >= 2:
                integral_u = sum((p - ls) / scale(p) for p in points) * step
                du = (dd - old_dd) / ((ls - lam[i - 2]) / 2)
                new = new + alpha_t * ((lt - ls) ** 2 / 2 + integral_u * scale(lt)) * du
            old_dd = dd
        ref = new + alpha_t * draw() * math.sqrt(max(lt ** 2 - ls ** 2 * r ** 2, 0.0))
        old = d
    return ref


def test_er_sde_follows_its_formula():
    x = _start(8.0)
    assert torch.allclose(_run("er_sde", x, SIGMAS), _er_sde_reference(x, SIGMAS), rtol=1e-4, atol=1e-4)
    fx = _start(1.0)
    got = _run("er_sde", fx, FLOW_SIGMAS, flow_denoiser, FlowSampling(3.0))
    assert torch.allclose(got, _er_sde_reference(fx, FLOW_SIGMAS, flow=True), rtol=1e-4, atol=1e-4)


# --- seeds_2, seeds_3, exp_heun_2_x0(_sde) ---------------------------------------------------------------

def _seeds_reference(x, sigmas, rs, eta=1.0, rule="phi_1", flow=False):
    """SEEDS written out in lambda = log(alpha / sigma): sub-steps at lerp(lambda_s, lambda_t, r), each an
    exponential-integrator step from x (decay sigma'/sigma e^(-r h eta)) with its chained noise."""
    def lam(v):
        return math.log((1 - v) / v) if flow else -math.log(v)

    def sig(l):
        return 1 / (1 + math.exp(l)) if flow else math.exp(-l)

    def alpha(v):
        return 1 - v if flow else 1.0

    s = sigmas.tolist()
    if flow and s[0] >= 1:
        s[0] = FlowSampling(3.0).percent_to_sigma(1e-4)
    draw = _cpu_draws(x)
    ref = x.clone()
    for a, b in zip(s[:-1], s[1:]):
        d = _ideal(ref, a, C, flow)
        if b == 0:
            ref = d
            continue
        h = lam(b) - lam(a)
        he = h * (eta + 1)
        points = [sig(lam(a) + r * h) for r in rs] + [b]
        preds, noise, last_r = [d], None, 0.0  # the data predictions so far
        for k, (r, point) in enumerate(zip(list(rs) + [1.0], points)):
            decay = point / a * math.exp(-r * h * eta)
            if k == 0 or (k == len(rs) and len(rs) == 1 and rule == "phi_1"):
                phi1 = math.expm1(-r * he)
                if k == 0:
                    combo = preds[0]
                else:
                    combo = (1 - 1 / (2 * rs[0])) * preds[0] + 1 / (2 * rs[0]) * preds[1]
                new = decay * ref - alpha(point) * phi1 * combo
            else:
                r_prev = rs[k - 1]
                phi1 = math.expm1(-r * he)
                phi2 = (math.expm1(-r * he) + r * he) / (-r * he)
                w = r / r_prev * phi2 if k < len(rs) else phi2 / r_prev
                new = decay * ref - alpha(point) * ((phi1 - w) * preds[0] + w * preds[-1])
            if eta > 0:
                if noise is None:
                    noise = math.sqrt(-math.expm1(-2 * r * h * eta)) * draw()
                else:
                    seg = (last_r - r) * h * eta
                    noise = noise * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * draw()
                new = new + noise * point
            last_r = r
            if k < len(rs):
                preds.append(_ideal(new, point, C, flow))
            else:
                ref = new
    return ref


def test_seeds_2_follows_its_formula():
    x = _start(8.0)
    assert torch.allclose(_run("seeds_2", x, SIGMAS), _seeds_reference(x, SIGMAS, [0.5]), rtol=1e-4, atol=1e-4)
    fx = _start(1.0)
    got = _run("seeds_2", fx, FLOW_SIGMAS, flow_denoiser, FlowSampling(3.0))
    assert torch.allclose(got, _seeds_reference(fx, FLOW_SIGMAS, [0.5], flow=True), rtol=1e-4, atol=1e-4)


def test_seeds_3_follows_its_formula():
    x = _start(8.0)
    expected = _seeds_reference(x, SIGMAS, [1 / 3, 2 / 3])
    assert torch.allclose(_run("seeds_3", x, SIGMAS), expected, rtol=1e-4, atol=1e-4)


def test_exp_heun_2_x0_is_seeds_2_at_r_1_with_the_phi_2_rule():
    x = _start(8.0)
    expected = _seeds_reference(x, SIGMAS, [1.0], eta=0.0, rule="phi_2")
    assert torch.allclose(_run("exp_heun_2_x0", x, SIGMAS), expected, rtol=1e-4, atol=1e-4)
    expected = _seeds_reference(x, SIGMAS, [1.0], eta=1.0, rule="phi_2")
    assert torch.allclose(_run("exp_heun_2_x0_sde", x, SIGMAS), expected, rtol=1e-4, atol=1e-4)


# --- dpm_fast ----------------------------------------------------------------------------------------------

def test_dpm_fast_orders_spend_the_step_budget():
    from flowrun.diffusion.dpm_solver import fast_orders

    for nfe, orders in {1: [1], 2: [2], 3: [2, 1], 5: [3, 2], 6: [3, 2, 1], 7: [3, 3, 1], 10: [3, 3, 3, 1]}.items():
        assert fast_orders(nfe) == orders and sum(orders) == nfe


def test_dpm_fast_one_evaluation_is_an_euler_step_to_the_last_sigma():
    x = _start(8.0)
    sigmas = torch.tensor([8.0, 0.5])  # a budget of one evaluation, from sigma_max to the last sigma
    expected = x + (x - gaussian_denoiser(x, torch.tensor([8.0]))) / 8.0 * (0.5 - 8.0)
    assert torch.allclose(_run("dpm_fast", x, sigmas), expected, rtol=1e-5, atol=1e-5)


def test_dpm_fast_two_evaluations_are_a_dpm_solver_2_step():
    x = _start(8.0)
    sigmas = torch.tensor([8.0, 0.5, 0.0])  # two evaluations, ending at the last non-zero sigma
    eps = (x - gaussian_denoiser(x, torch.tensor([8.0]))) / 8.0
    mid = math.sqrt(8.0 * 0.5)  # the midpoint in log sigma
    u = x + (mid - 8.0) * eps
    eps_mid = (u - gaussian_denoiser(u, torch.tensor([mid]))) / mid
    expected = x + (0.5 - 8.0) * eps_mid  # DPM-Solver-2: the step with the midpoint's noise prediction
    assert torch.allclose(_run("dpm_fast", x, sigmas), expected, rtol=1e-5, atol=1e-5)


def test_dpm_fast_is_exact_for_a_point_mass_and_accurate_for_a_gaussian():
    """It stops at the last non-zero sigma (as ComfyUI's), where the exact ODE solution is known."""
    x = _start(8.0)
    target = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    out = _run("dpm_fast", x, SIGMAS, lambda v, sigma: target.expand_as(v))
    assert torch.allclose(out, target + (x - target) * (0.15 / 8.0), rtol=1e-5, atol=1e-5)
    exact = x * math.sqrt((C + 0.2 ** 2) / (C + 8.0 ** 2))
    errors = [float((_run("dpm_fast", x, torch.cat([torch.linspace(8.0, 0.2, n), torch.zeros(1)])) - exact).abs().max())
              for n in (30, 60)]
    # third-order steps, but the budget ends with a first-order one: the error falls as h^2 (0.012, 0.003)
    assert errors[0] < 0.015 and errors[1] < errors[0] / 3


# --- dpm_adaptive ------------------------------------------------------------------------------------------

def test_the_step_size_controller_grows_on_small_errors_and_rejects_large_ones():
    from flowrun.diffusion.dpm_solver import StepSizeController

    pid = StepSizeController(0.05, 0.0, 1.0, 0.0, order=3)
    assert pid.propose_step(0.001)  # factor 1 + atan(1000^(1/3) - 1)
    assert pid.h == pytest.approx(0.05 * (1 + math.atan(1000.0 ** (1 / 3) - 1)), rel=1e-6)
    h = pid.h
    assert not pid.propose_step(8.0)  # factor 1 + atan(0.5 - 1) = 0.536 < 0.81: rejected, the step shrinks
    assert pid.h == pytest.approx(h * (1 + math.atan(8.0 ** (-1 / 3) - 1)), rel=1e-6)


def test_dpm_adaptive_is_exact_for_a_point_mass_and_within_tolerance_for_a_gaussian():
    x = _start(8.0)
    target = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    seen = []

    def point_mass(v, sigma):
        seen.append(float(sigma[0]))
        return target.expand_as(v)

    out = samplers.get("dpm_adaptive")(point_mass, x.clone(), SIGMAS, SeedNoise([5]), lambda i: None)
    assert torch.allclose(out, target + (x - target) * (0.15 / 8.0), rtol=1e-5, atol=1e-5)
    assert seen[0] == 8.0 and min(seen) >= 0.15 * (1 - 1e-5)  # from the first to the last non-zero sigma
    exact = x * math.sqrt((C + 0.15 ** 2) / (C + 8.0 ** 2))  # |exact| up to 1.56 here
    loose = float((_run("dpm_adaptive", x, SIGMAS) - exact).abs().max())  # rtol 0.05: 0.07
    tight = float((_run("dpm_adaptive", x, SIGMAS, rtol=0.0005, atol=0.00005) - exact).abs().max())  # 0.010
    assert loose < 0.1 and tight < loose / 4


def test_dpm_solver_3_is_exact_when_the_noise_prediction_is_linear_in_log_sigma():
    """DPM-Solver-3 integrates an eps(lambda) = a + b lambda that does not depend on x exactly (lambda =
    -log sigma), whatever the step sizes: dx/dsigma = a - b log(sigma) has x(s) = x0 + a (s - s0) -
    b [s log s - s]_s0^s. dpm_adaptive (order 3) keeps the third-order result of every step; dpm_fast's
    budgets end with a first- or second-order step, which is not exact there."""
    x = _start(8.0)
    a = torch.randn(x.shape, generator=torch.Generator().manual_seed(21))
    b = torch.randn(x.shape, generator=torch.Generator().manual_seed(22))

    def linear(v, sigma):
        s = sigma.view(-1, 1, 1, 1)
        return v - s * (a - b * s.log())

    def exact(s0, s1):
        return x + a * (s1 - s0) - b * ((s1 * math.log(s1) - s1) - (s0 * math.log(s0) - s0))

    assert torch.allclose(_run("dpm_adaptive", x, SIGMAS, linear), exact(8.0, 0.15), rtol=1e-4, atol=1e-4)
    fast = _run("dpm_fast", x, SIGMAS, linear)
    assert not torch.allclose(fast, exact(8.0, 0.15), rtol=1e-4, atol=1e-4)


def test_dpm_adaptive_order_2_takes_two_evaluations_a_try_and_reports_progress_to_the_end():
    x = _start(8.0)
    calls, steps = [], []

    def counted(v, sigma):
        calls.append(float(sigma[0]))
        return gaussian_denoiser(v, sigma)

    samplers.get("dpm_adaptive")(counted, x.clone(), SIGMAS, SeedNoise([5]), steps.append, order=2)
    assert len(calls) % 2 == 0 and len(calls) >= 4
    assert steps[-1] == len(SIGMAS) - 2 and steps == sorted(steps)
    with pytest.raises(ValueError, match="order"):
        _run("dpm_adaptive", x, SIGMAS, order=4)
