"""Custom sampling: KSampler taken apart into its pieces, with ComfyUI's names, fields and meanings.

A SAMPLER (KSamplerSelect, the parameterised Sampler* nodes) says how to step, SIGMAS (the scheduler
nodes, split and flipped) where to step, a NOISE (RandomNoise, DisableNoise) where to start and a GUIDER
(CFGGuider, BasicGuider, DualCFGGuider) what to steer by; SamplerCustom and SamplerCustomAdvanced run
them through the same sampling core as KSampler (flowrun.diffusion.ksampler), so the same pieces give
the same latent. ModelSamplingDiscrete gives a model another prediction type.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from flowrun.diffusion.names import SAMPLERS, SCHEDULERS
from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import SEED_MAX
from flowrun.nodes.registry import NodeParams, NoParams, node
from flowrun.values import Conditioning, Guider, Latent, Noise, Sampler

SamplerName = Literal[SAMPLERS]  # type: ignore[valid-type]
SchedulerName = Literal[SCHEDULERS]  # type: ignore[valid-type]
NoiseDevice = Literal["gpu", "cpu"]
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675  # SD's discrete schedule, ComfyUI's defaults
NOISE_DEVICE = "ComfyUI's choice of noise device; flowrun draws noise on the CPU for both, so a seed means one image."


# --- samplers -------------------------------------------------------------------------------------------

class KSamplerSelectParams(NodeParams):
    sampler_name: SamplerName = "euler"


@node("KSamplerSelect", outputs={"sampler": ports.SAMPLER}, category="sampling/custom_sampling/samplers")
def ksampler_select(p: KSamplerSelectParams, ctx) -> Sampler:
    """A sampler by name, with its default options."""
    return Sampler(p.sampler_name)


class EulerAncestralParams(NodeParams):
    eta: float = Field(1.0, ge=0.0, le=100.0)
    s_noise: float = Field(1.0, ge=0.0, le=100.0)


@node("SamplerEulerAncestral", outputs={"sampler": ports.SAMPLER}, category="sampling/custom_sampling/samplers")
def sampler_euler_ancestral(p: EulerAncestralParams, ctx) -> Sampler:
    """euler_ancestral with its amount of ancestral noise (eta) and a scale of the added noise (s_noise)."""
    return Sampler("euler_ancestral", (("eta", p.eta), ("s_noise", p.s_noise)))


class DPMPP2MSDEParams(NodeParams):
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    eta: float = Field(1.0, ge=0.0, le=100.0)
    s_noise: float = Field(1.0, ge=0.0, le=100.0)
    noise_device: NoiseDevice = Field("gpu", description=NOISE_DEVICE)


@node("SamplerDPMPP_2M_SDE", outputs={"sampler": ports.SAMPLER}, category="sampling/custom_sampling/samplers")
def sampler_dpmpp_2m_sde(p: DPMPP2MSDEParams, ctx) -> Sampler:
    """dpmpp_2m_sde with its second-order rule (midpoint or heun), eta and s_noise."""
    return Sampler("dpmpp_2m_sde", (("eta", p.eta), ("s_noise", p.s_noise), ("solver_type", p.solver_type)))


class DPMPPSDEParams(NodeParams):
    eta: float = Field(1.0, ge=0.0, le=100.0)
    s_noise: float = Field(1.0, ge=0.0, le=100.0)
    r: float = Field(0.5, ge=0.0, le=100.0)
    noise_device: NoiseDevice = Field("gpu", description=NOISE_DEVICE)


@node("SamplerDPMPP_SDE", outputs={"sampler": ports.SAMPLER}, category="sampling/custom_sampling/samplers")
def sampler_dpmpp_sde(p: DPMPPSDEParams, ctx) -> Sampler:
    """dpmpp_sde with eta, s_noise and r (where in each step the intermediate evaluation sits)."""
    if p.r == 0:
        raise NodeError("r must be above 0: the intermediate evaluation divides by it")
    return Sampler("dpmpp_sde", (("eta", p.eta), ("s_noise", p.s_noise), ("r", p.r)))


class LMSParams(NodeParams):
    order: int = Field(4, ge=1, le=100)


@node("SamplerLMS", outputs={"sampler": ports.SAMPLER}, category="sampling/custom_sampling/samplers")
def sampler_lms(p: LMSParams, ctx) -> Sampler:
    """lms with its order (how many past derivatives each step combines)."""
    return Sampler("lms", (("order", p.order),))


# --- schedulers -----------------------------------------------------------------------------------------

class BasicSchedulerParams(NodeParams):
    scheduler: SchedulerName = "normal"
    steps: int = Field(20, ge=1, le=10000)
    denoise: float = Field(1.0, ge=0.0, le=1.0)


@node("BasicScheduler", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/schedulers")
def basic_scheduler(p: BasicSchedulerParams, ctx, *, model: ports.Model) -> ports.Sigmas:
    """The model's sigmas by a scheduler name; below denoise 1 the last steps + 1 of a longer schedule."""
    import torch

    from flowrun.diffusion import schedules

    total = p.steps
    if p.denoise < 1.0:
        if p.denoise <= 0.0:
            return torch.FloatTensor([])
        total = int(p.steps / p.denoise)
    return schedules.calculate(model.sampling, p.scheduler, total).cpu()[-(p.steps + 1):]


class ExponentialParams(NodeParams):
    steps: int = Field(20, ge=1, le=10000)
    sigma_max: float = Field(SIGMA_MAX, ge=0.0, le=5000.0)
    sigma_min: float = Field(SIGMA_MIN, ge=0.0, le=5000.0)


class KarrasParams(ExponentialParams):  # the same fields, then rho (ComfyUI's widget order)
    rho: float = Field(7.0, ge=0.0, le=100.0)


@node("KarrasScheduler", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/schedulers")
def karras_scheduler(p: KarrasParams, ctx) -> ports.Sigmas:
    """Karras et al.'s schedule: sigma^(1/rho) falling linearly from sigma_max to sigma_min, then 0."""
    from flowrun.diffusion import schedules

    return schedules.karras(p.steps, p.sigma_min, p.sigma_max, p.rho)


@node("ExponentialScheduler", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/schedulers")
def exponential_scheduler(p: ExponentialParams, ctx) -> ports.Sigmas:
    """Sigmas uniform in log from sigma_max to sigma_min, then 0."""
    from flowrun.diffusion import schedules

    return schedules.exponential(p.steps, p.sigma_min, p.sigma_max)


class PolyexponentialParams(ExponentialParams):
    rho: float = Field(1.0, ge=0.0, le=100.0)


@node("PolyexponentialScheduler", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/schedulers")
def polyexponential_scheduler(p: PolyexponentialParams, ctx) -> ports.Sigmas:
    """Log sigma along a polynomial ramp of degree rho (1: exponential), then 0."""
    from flowrun.diffusion import schedules

    return schedules.polyexponential(p.steps, p.sigma_min, p.sigma_max, p.rho)


class SDTurboParams(NodeParams):
    steps: int = Field(1, ge=1, le=10)
    denoise: float = Field(1.0, ge=0.0, le=1.0)


@node("SDTurboScheduler", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/schedulers")
def sd_turbo_scheduler(p: SDTurboParams, ctx, *, model: ports.Model) -> ports.Sigmas:
    """SD Turbo's few-step schedule: the model's sigmas at timesteps 999, 899, ..., from denoise on."""
    from flowrun.diffusion import schedules

    return schedules.sd_turbo(model.sampling, p.steps, p.denoise)


# --- sigma lists ----------------------------------------------------------------------------------------

class SplitSigmasParams(NodeParams):
    step: int = Field(0, ge=0, le=10000)


@node("SplitSigmas", outputs={"high_sigmas": ports.SIGMAS, "low_sigmas": ports.SIGMAS}, category="sampling/custom_sampling/sigmas")
def split_sigmas(p: SplitSigmasParams, ctx, *, sigmas: ports.Sigmas) -> dict:
    """Steps 0..step (high) and step..end (low): the sigma at `step` ends the one and starts the other."""
    if p.step > len(sigmas) - 1:
        raise NodeError(f"step {p.step} is past the end of the sigmas: they have {len(sigmas)} values, so step "
                        f"may be 0..{max(len(sigmas) - 1, 0)}")
    return {"high_sigmas": sigmas[:p.step + 1], "low_sigmas": sigmas[p.step:]}


class SplitSigmasDenoiseParams(NodeParams):
    denoise: float = Field(1.0, ge=0.0, le=1.0)


@node("SplitSigmasDenoise", outputs={"high_sigmas": ports.SIGMAS, "low_sigmas": ports.SIGMAS},
      category="sampling/custom_sampling/sigmas")
def split_sigmas_denoise(p: SplitSigmasDenoiseParams, ctx, *, sigmas: ports.Sigmas) -> dict:
    """The last round(steps * denoise) steps (low) and the steps before them (high)."""
    low = round(max(len(sigmas) - 1, 0) * p.denoise)
    return {"high_sigmas": sigmas[:-low], "low_sigmas": sigmas[-(low + 1):]}


@node("FlipSigmas", outputs={"sigmas": ports.SIGMAS}, category="sampling/custom_sampling/sigmas")
def flip_sigmas(p: NoParams, ctx, *, sigmas: ports.Sigmas) -> ports.Sigmas:
    """The sigmas in reverse order (rising: for unsampling); a first 0 becomes 0.0001."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


# --- noise ----------------------------------------------------------------------------------------------

class RandomNoiseParams(NodeParams):
    noise_seed: int = Field(0, ge=0, le=SEED_MAX, description="Initial noise: torch.randn on the CPU from this seed.")


@node("RandomNoise", outputs={"noise": ports.NOISE}, category="sampling/custom_sampling/noise")
def random_noise(p: RandomNoiseParams, ctx) -> Noise:
    """Start from the seed's noise (the same as KSampler's for the same seed)."""
    return Noise(p.noise_seed)


@node("DisableNoise", outputs={"noise": ports.NOISE}, category="sampling/custom_sampling/noise")
def disable_noise(p: NoParams, ctx) -> Noise:
    """Start from the latent itself, adding no noise (for a latent that already carries its noise)."""
    return Noise(None)


# --- guiders --------------------------------------------------------------------------------------------

class CFGGuiderParams(NodeParams):
    cfg: float = Field(8.0, ge=0.0, le=100.0)


@node("CFGGuider", outputs={"guider": ports.GUIDER}, category="sampling/custom_sampling/guiders")
def cfg_guider(p: CFGGuiderParams, ctx, *, model: ports.Model, positive: Conditioning,
               negative: Conditioning) -> Guider:
    """Classifier-free guidance: uncond + (cond - uncond) * cfg, as KSampler guides."""
    return Guider(model, positive, negative, p.cfg)


@node("BasicGuider", outputs={"guider": ports.GUIDER}, category="sampling/custom_sampling/guiders")
def basic_guider(p: NoParams, ctx, *, model: ports.Model, conditioning: Conditioning) -> Guider:
    """One conditioning, no negative (guidance-distilled models)."""
    return Guider(model, conditioning)


class DualCFGParams(NodeParams):
    cfg_conds: float = Field(8.0, ge=0.0, le=100.0)
    cfg_cond2_negative: float = Field(8.0, ge=0.0, le=100.0)
    style: Literal["regular", "nested"] = "regular"


@node("DualCFGGuider", outputs={"guider": ports.GUIDER}, category="sampling/custom_sampling/guiders")
def dual_cfg_guider(p: DualCFGParams, ctx, *, model: ports.Model, cond1: Conditioning, cond2: Conditioning,
                    negative: Conditioning) -> Guider:
    """Two conditionings: cond2 guided away from negative by cfg_cond2_negative, cond1 away from cond2 by
    cfg_conds (regular: the two added; nested: the second applied to the result of the first)."""
    return Guider(model, cond1, negative, p.cfg_conds, middle=cond2, cfg2=p.cfg_cond2_negative,
                  style="dual" if p.style == "regular" else "dual_nested")


# --- sampling -------------------------------------------------------------------------------------------

def _run(ctx, model, guide, sampler: Sampler, sigmas, noise: Noise, latent: Latent) -> dict:
    from flowrun.diffusion.ksampler import sample

    try:
        seed_noise = ctx.noise(noise.step_seed).varied([noise.variation])
        out = sample(model, guide, sampler.name, sigmas, seed_noise, latent,
                     add_noise=noise.seed is not None, sampler_options=sampler.kwargs(), progress=ctx.progress,
                     preview=ctx.preview)[0]
    except ValueError as exc:
        raise NodeError(str(exc)) from None
    return {"output": out.output, "denoised_output": out.denoised}


class SamplerCustomParams(NodeParams):
    add_noise: bool = True
    noise_seed: int = Field(0, ge=0, le=SEED_MAX, description="Initial noise: torch.randn on the CPU from this seed.")
    cfg: float = Field(8.0, ge=0.0, le=100.0)


@node("SamplerCustom", outputs={"output": ports.LATENT, "denoised_output": ports.LATENT},
      category="sampling/custom_sampling")
def sampler_custom(p: SamplerCustomParams, ctx, *, model: ports.Model, positive: Conditioning,
                   negative: Conditioning, sampler: Sampler, sigmas: ports.Sigmas, latent_image: Latent) -> dict:
    """Denoise latent_image along sigmas with a sampler under classifier-free guidance; also the last
    step's prediction of the clean latent (denoised_output)."""
    from flowrun.diffusion.ksampler import cfg_guide

    guide = cfg_guide(model, positive, negative, [p.cfg], latent_image.samples.shape[0])
    return _run(ctx, model, guide, sampler, sigmas, Noise(p.noise_seed if p.add_noise else None), latent_image)


@node("SamplerCustomAdvanced", outputs={"output": ports.LATENT, "denoised_output": ports.LATENT},
      category="sampling/custom_sampling")
def sampler_custom_advanced(p: NoParams, ctx, *, noise: Noise, guider: Guider, sampler: Sampler,
                            sigmas: ports.Sigmas, latent_image: Latent) -> dict:
    """Denoise latent_image from a NOISE along SIGMAS with a SAMPLER steered by a GUIDER; also the last
    step's prediction of the clean latent (denoised_output)."""
    from flowrun.diffusion.ksampler import guider_guide

    return _run(ctx, guider.model, guider_guide(guider), sampler, sigmas, noise, latent_image)


# --- model patches --------------------------------------------------------------------------------------

PREDICTIONS = {"eps": "epsilon", "v_prediction": "v_prediction", "lcm": "lcm", "x0": "x0"}


class ModelSamplingDiscreteParams(NodeParams):
    sampling: Literal["eps", "v_prediction", "lcm", "x0"] = "eps"
    zsnr: bool = False


@node("ModelSamplingDiscrete", outputs={"model": ports.MODEL}, category="advanced/model")
def model_sampling_discrete(p: ModelSamplingDiscreteParams, ctx, *, model: ports.Model) -> ports.Model:
    """The model read with another prediction type (eps, v_prediction, lcm, x0), optionally with its schedule
    rescaled to zero terminal SNR; a new model value, the input is left as it is."""
    sampling = model.sampling.with_prediction(PREDICTIONS[p.sampling], zsnr=p.zsnr)
    return dataclasses.replace(model, sampling=sampling)
