"""Samplers: ComfyUI's names and meanings, each walking a sigma sequence over a denoiser D(x, sigma).

The algorithms are those of k-diffusion as ComfyUI runs them (Karras et al. 2022 for euler/heun;
DPM-Solver and DPM-Solver++ by Lu et al. 2022 for dpm_2 and the dpmpp family; LMS with coefficients
integrated numerically; LCM by Luo et al. 2023; UniPC by Zhao et al. 2023 in `unipc.py`). The samplers
ComfyUI added since live beside it, one family a module: CFG++ (`cfg_pp.py`), Adams–Bashforth (`adams.py`:
ipndm, ipndm_v, deis), `multistep.py` (res_multistep, gradient_estimation), `step_samplers.py` (ddpm,
heunpp2), `er_sde.py`, `seeds.py` (seeds_2/3, exp_heun_2_x0), `dpm_solver.py` (dpm_fast, dpm_adaptive).
Per-step noise comes from the call's `SeedNoise` (flowrun.diffusion.noise, where a seed's meaning lives).
"""

from __future__ import annotations

from flowrun.diffusion.names import SAMPLERS
from flowrun.diffusion.noise import SeedNoise
# the shared pieces, here too so that callers keep reading them from `samplers`
from flowrun.diffusion.sampler_math import Callback, Denoiser, FlowSnr, Snr, _ones, ancestral_step, to_d  # noqa: F401


def sample_euler(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        x = x + to_d(x, sigmas[i] * s_in, denoised) * (sigmas[i + 1] - sigmas[i])
        callback(i)
    return x


def sample_euler_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                           s_noise: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i] * s_in, denoised) * (down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        callback(i)
    return x


def sample_heun(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i] * s_in, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1] * s_in, model(x2, sigmas[i + 1] * s_in))
            x = x + (d + d2) / 2 * dt
        callback(i)
    return x


def sample_dpm_2(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i] * s_in, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x2 = x + d * (mid - sigmas[i])
            d2 = to_d(x2, mid * s_in, model(x2, mid * s_in))
            x = x + d2 * (sigmas[i + 1] - sigmas[i])
        callback(i)
    return x


def sample_dpm_2_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i] * s_in, denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x2 = x + d * (mid - sigmas[i])
            d2 = to_d(x2, mid * s_in, model(x2, mid * s_in))
            x = x + d2 * (down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
        callback(i)
    return x


def _lms_coefficient(order: int, t, i: int, j: int) -> float:
    from scipy import integrate

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, order: int = 4):
    s_in = _ones(x)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i] * s_in, denoised))
        if len(ds) > order:
            ds.pop(0)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur = min(i + 1, order)
            coeffs = [_lms_coefficient(cur, sigmas_cpu, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        callback(i)
    return x


def sample_dpmpp_2s_ancestral(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0):
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + to_d(x, sigmas[i] * s_in, denoised) * (down - sigmas[i])
        else:
            t, t_next = -sigmas[i].log(), -down.log()
            h = t_next - t
            s = t + h / 2
            x2 = ((-s).exp() / (-t).exp()) * x - (-h / 2).expm1() * denoised
            denoised2 = model(x2, (-s).exp() * s_in)
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * up
        callback(i)
    return x


def sample_dpmpp_sde(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                     s_noise: float = 1.0, r: float = 0.5, snr: "Snr | None" = None):
    if len(sigmas) <= 1:
        return x
    snr = snr or Snr()
    noise = seed_noise.brownian(x, sigmas)
    sigmas = snr.offset_first(sigmas)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = snr.lam(sigmas[i]), snr.lam(sigmas[i + 1])
            h = lam_t - lam_s
            lam_s1 = lam_s + r * h
            fac = 1 / (2 * r)
            sigma_s1 = snr.sigma(lam_s1)
            alpha_s = sigmas[i] * lam_s.exp()
            alpha_s1 = sigma_s1 * lam_s1.exp()
            alpha_t = sigmas[i + 1] * lam_t.exp()
            sd, su = ancestral_step((-lam_s).exp(), (-lam_s1).exp(), eta)
            h_ = -sd.log() - lam_s
            x2 = (alpha_s1 / alpha_s) * (-h_).exp() * x - alpha_s1 * (-h_).expm1() * denoised
            if eta > 0:
                x2 = x2 + alpha_s1 * noise(sigmas[i], sigma_s1) * s_noise * su
            denoised2 = model(x2, sigma_s1 * s_in)
            sd, su = ancestral_step((-lam_s).exp(), (-lam_t).exp(), eta)
            h_ = -sd.log() - lam_s
            mixed = (1 - fac) * denoised + fac * denoised2
            x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * mixed
            if eta > 0:
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * su
        callback(i)
    return x


def sample_dpmpp_2m(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback):
    s_in = _ones(x)
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * mixed
        old = denoised
        callback(i)
    return x


def sample_dpmpp_2m_sde(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                        s_noise: float = 1.0, solver_type: str = "midpoint", snr: "Snr | None" = None):
    """DPM-Solver++(2M) SDE; the second-order correction by the midpoint rule (the default) or Heun's."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"unknown solver_type {solver_type!r}; known: midpoint, heun")
    if len(sigmas) <= 1:
        return x
    snr = snr or Snr()
    noise = seed_noise.brownian(x, sigmas)
    sigmas = snr.offset_first(sigmas)
    s_in = _ones(x)
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = snr.lam(sigmas[i]), snr.lam(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old)
            if eta > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old, h_last = denoised, h
        callback(i)
    return x


def sample_dpmpp_3m_sde(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, eta: float = 1.0,
                        snr: "Snr | None" = None):
    if len(sigmas) <= 1:
        return x
    snr = snr or Snr()
    noise = seed_noise.brownian(x, sigmas)
    sigmas = snr.offset_first(sigmas)
    s_in = _ones(x)
    d1_prev, d2_prev = None, None
    h, h1, h2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = snr.lam(sigmas[i]), snr.lam(sigmas[i + 1])
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h2 is not None:
                r0, r1 = h1 / h, h2 / h
                d1_0 = (denoised - d1_prev) / r0
                d1_1 = (d1_prev - d2_prev) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h1 is not None:
                d = (denoised - d1_prev) / (h1 / h)
                x = x + (alpha_t * (h_eta.neg().expm1() / h_eta + 1)) * d
            if eta > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        d1_prev, d2_prev = denoised, d1_prev
        h1, h2 = h, h1
        callback(i)
    return x


def sample_lcm(model: Denoiser, x, sigmas, seed_noise: SeedNoise, callback: Callback, noise_scaling=None):
    """LCM: jump to the prediction, then noise it to the next sigma (as the model's sampling does:
    `noise_scaling(sigma, noise, latent)`, latent + noise * sigma unless given)."""
    noise = seed_noise.gaussian(x)
    s_in = _ones(x)
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i] * s_in)
        if sigmas[i + 1] > 0:
            fresh = noise(sigmas[i], sigmas[i + 1])
            x = noise_scaling(sigmas[i + 1], fresh, x) if noise_scaling else x + fresh * sigmas[i + 1]
        callback(i)
    return x


# ComfyUI's *_gpu samplers differ from their plain names only in drawing the Brownian tree on the GPU.
# flowrun draws every random number on the CPU from the seed (flowrun.diffusion.noise), so here they are
# the plain samplers: on a CPU the same numbers as ComfyUI's; on a GPU ComfyUI's *_gpu noise differs
# from flowrun's, which keeps the CPU tree so that a seed means the same image on every device.
GPU_NOISE = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
             "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun", "dpmpp_3m_sde_gpu": "dpmpp_3m_sde"}


def needs_uncond(name: str) -> bool:
    """Whether the sampler reads the unconditional prediction (the CFG++ samplers: `uncond=` an UncondSink
    the guided denoiser fills)."""
    return name.endswith("_cfg_pp")


def get(name: str, sampling=None):
    """The sampling function for a ComfyUI sampler name; for a model whose `sampling` is a rectified flow,
    the flow forms ComfyUI runs for it (ancestral steps, the SDE solvers' log-SNR, LCM's renoising)."""
    import functools

    from flowrun.diffusion import adams, cfg_pp, dpm_solver, er_sde, multistep, seeds, step_samplers, unipc

    if getattr(sampling, "flow", False):
        from flowrun.diffusion import flow_samplers

        flow_snr = FlowSnr(sampling.percent_to_sigma)
        flow_table = {
            "euler_ancestral": flow_samplers.sample_euler_ancestral,
            "dpm_2_ancestral": flow_samplers.sample_dpm_2_ancestral,
            "dpmpp_2s_ancestral": flow_samplers.sample_dpmpp_2s_ancestral,
            "dpmpp_sde": functools.partial(sample_dpmpp_sde, snr=flow_snr),
            "dpmpp_2m_sde": functools.partial(sample_dpmpp_2m_sde, snr=flow_snr),
            "dpmpp_2m_sde_heun": functools.partial(sample_dpmpp_2m_sde, snr=flow_snr, solver_type="heun"),
            "dpmpp_3m_sde": functools.partial(sample_dpmpp_3m_sde, snr=flow_snr),
            "lcm": functools.partial(sample_lcm, noise_scaling=sampling.noise_scaling),
            "euler_cfg_pp": functools.partial(cfg_pp.sample_euler_cfg_pp, snr=flow_snr),
            "euler_ancestral_cfg_pp": functools.partial(cfg_pp.sample_euler_ancestral_cfg_pp, snr=flow_snr),
            "dpmpp_2s_ancestral_cfg_pp": cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp_flow,
            "er_sde": functools.partial(er_sde.sample_er_sde, snr=flow_snr),
            "seeds_2": functools.partial(seeds.sample_seeds_2, snr=flow_snr),
            "seeds_3": functools.partial(seeds.sample_seeds_3, snr=flow_snr),
            "exp_heun_2_x0": functools.partial(seeds.sample_exp_heun_2_x0, snr=flow_snr),
            "exp_heun_2_x0_sde": functools.partial(seeds.sample_exp_heun_2_x0_sde, snr=flow_snr),
        }
        name = GPU_NOISE.get(name, name)
        if name in flow_table:
            return flow_table[name]

    table = {
        "euler": sample_euler, "ddim": sample_euler,  # ComfyUI's "ddim" is Euler (with random noise for inpainting)
        "euler_ancestral": sample_euler_ancestral, "heun": sample_heun, "dpm_2": sample_dpm_2,
        "dpm_2_ancestral": sample_dpm_2_ancestral, "lms": sample_lms, "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
        "dpmpp_sde": sample_dpmpp_sde, "dpmpp_2m": sample_dpmpp_2m, "dpmpp_2m_sde": sample_dpmpp_2m_sde,
        "dpmpp_3m_sde": sample_dpmpp_3m_sde, "lcm": sample_lcm,
        "uni_pc": unipc.sample_unipc, "uni_pc_bh2": unipc.sample_unipc_bh2,
        "euler_cfg_pp": cfg_pp.sample_euler_cfg_pp, "euler_ancestral_cfg_pp": cfg_pp.sample_euler_ancestral_cfg_pp,
        "dpmpp_2m_cfg_pp": cfg_pp.sample_dpmpp_2m_cfg_pp,
        "dpmpp_2s_ancestral_cfg_pp": cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp,
        "dpmpp_2m_sde_heun": functools.partial(sample_dpmpp_2m_sde, solver_type="heun"),
        "heunpp2": step_samplers.sample_heunpp2, "ddpm": step_samplers.sample_ddpm,
        "ipndm": adams.sample_ipndm, "ipndm_v": adams.sample_ipndm_v, "deis": adams.sample_deis,
        "res_multistep": multistep.sample_res_multistep, "res_multistep_cfg_pp": multistep.sample_res_multistep_cfg_pp,
        "res_multistep_ancestral": multistep.sample_res_multistep_ancestral,
        "res_multistep_ancestral_cfg_pp": multistep.sample_res_multistep_ancestral_cfg_pp,
        "gradient_estimation": multistep.sample_gradient_estimation,
        "gradient_estimation_cfg_pp": multistep.sample_gradient_estimation_cfg_pp, "er_sde": er_sde.sample_er_sde,
        "seeds_2": seeds.sample_seeds_2, "seeds_3": seeds.sample_seeds_3, "exp_heun_2_x0": seeds.sample_exp_heun_2_x0,
        "exp_heun_2_x0_sde": seeds.sample_exp_heun_2_x0_sde, "dpm_fast": dpm_solver.sample_dpm_fast,
        "dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    }
    name = GPU_NOISE.get(name, name)
    if name not in table:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return table[name]
