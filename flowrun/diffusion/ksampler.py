"""The sampling core that KSampler, KSamplerAdvanced, SamplerCustom and SamplerCustomAdvanced share:
noise from the seed, a sigma sequence, a sampler walking it over a guided denoiser.

Conventions (ComfyUI's): LATENT holds the VAE's unscaled latent; it is multiplied by the model's latent
scale (or normalised per channel, DiffusionModel.latent_in) before sampling unless all zeros, and taken
back after. The initial noise (flowrun.diffusion.noise:
CPU randn of the seed) is scaled by sqrt(1 + sigma_max^2) at full denoise or added as noise * sigma to
the latent when denoise < 1. A latent's `noise_mask` limits where sampling may change it: before every
model call the region outside the mask is reset to the original latent at the current noise level, and
the prediction there is the original latent (ComfyUI's KSamplerX0Inpaint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from flowrun.diffusion import guidance, latent_preview, samplers, schedules
from flowrun.diffusion.cfg_pp import UncondSink
from flowrun.diffusion.concat import per_cell
from flowrun.diffusion.lora import patched
from flowrun.diffusion.model import DiffusionModel
from flowrun.diffusion.noise import SeedNoise
from flowrun.values import Conditioning, Guider, Latent

# a step's preview: (step, total, the step's prediction of the clean latent in the model's space, rows of
# every cell stacked, its latent format); flowrun.diffusion.latent_preview.to_rgb turns it into RGB
Preview = Callable[[int, int, torch.Tensor, latent_preview.LatentFormat], None]

# builds the guided denoiser D(x, sigma) once the scaled start latent (cells stacked), the noise mask
# resized to it (or None) and the cells' seeds (unCLIP's embedding noise is drawn from them) are known;
# a CFG++ sampler's run also passes `uncond_sink=` (flowrun.diffusion.cfg_pp.UncondSink)
GuideBuilder = Callable[..., samplers.Denoiser]


@dataclass
class Sampled:
    """What one cell's sampling gives: the final latent and the last step's prediction of the clean one
    (ComfyUI's denoised_output; the final latent itself when no step ran)."""

    output: Latent
    denoised: Latent


def ksample(model: DiffusionModel, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive: Conditioning, negative: Conditioning, latent: Latent, denoise: float = 1.0,
            add_noise: bool = True, start_step: int | None = None, last_step: int | None = None,
            force_full_denoise: bool = False, progress: Callable[[int, int], None] | None = None,
            preview: Preview | None = None) -> Latent:
    """One cell: `ksample_batch` with a single seed."""
    return ksample_batch(model, noise=SeedNoise([seed]), cfgs=[cfg], steps=steps, sampler_name=sampler_name,
                         scheduler=scheduler, positive=positive, negative=negative, latent=latent, denoise=denoise,
                         add_noise=add_noise, start_step=start_step, last_step=last_step,
                         force_full_denoise=force_full_denoise, progress=progress, preview=preview)[0]


def ksample_batch(model: DiffusionModel, *, noise: SeedNoise, cfgs: list[float], steps: int, sampler_name: str,
                  scheduler: str, positive: Conditioning, negative: Conditioning, latent: Latent,
                  denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
                  last_step: int | None = None, force_full_denoise: bool = False,
                  progress: Callable[[int, int], None] | None = None, preview: Preview | None = None) -> list[Latent]:
    """Several cells that share everything but seed and cfg, in one batched sampler call: each cell's
    rows get their own seed's initial and per-step noise and their own guidance scale, so a cell renders
    as it would alone (up to float rounding of the batched forward passes)."""
    sigmas = schedules.sampler_sigmas(model.sampling, scheduler, sampler_name, steps, denoise)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if (start_step is not None and start_step >= len(sigmas) - 1) or len(sigmas) == 0:
        return [latent.replace(samples=latent.samples.float().clone()) for _ in noise.seeds]
    if start_step is not None:
        sigmas = sigmas[start_step:]
    guide = cfg_guide(model, positive, negative, cfgs, latent.samples.shape[0])
    return [s.output for s in sample(model, guide, sampler_name, sigmas, noise, latent, add_noise=add_noise,
                                     progress=progress, preview=preview)]


def cfg_guide(model: DiffusionModel, positive: Conditioning, negative: Conditioning | None, cfgs: list[float],
              rows: int | None) -> GuideBuilder:
    """Classifier-free guidance with one scale per cell (each cell `rows` rows of the batch; None: one cell)."""
    cfg = cfgs[0] if len(set(cfgs)) == 1 else [c for c in cfgs for _ in range(rows)]

    if negative is not None:  # ControlNetApply's controls steer the negative prompt too, as in ComfyUI
        from flowrun.diffusion.control import controls_to_uncond

        negative = controls_to_uncond(positive, negative)

    def build(start: torch.Tensor, mask: torch.Tensor | None, seeds: Sequence[int] = (0,),
              uncond_sink=None) -> samplers.Denoiser:
        cells = start.shape[0] // rows if rows else 1
        pos = guidance.prepare(model, per_cell(positive, rows, cells), start, True, mask, seeds)
        neg = (guidance.prepare(model, per_cell(negative, rows, cells), start, False, mask, seeds)
               if negative is not None else [])
        return guidance.denoiser(model, pos, neg, cfg, uncond_sink=uncond_sink)

    return build


def guider_guide(guider: Guider) -> GuideBuilder:
    """The guided denoiser a GUIDER value describes (CFGGuider, BasicGuider, DualCFGGuider)."""
    model = guider.model
    if guider.style == "cfg":
        return cfg_guide(model, guider.positive, guider.negative, [guider.cfg], None)
    if guider.style not in ("dual", "dual_nested"):
        raise ValueError(f"unknown guider style {guider.style!r}")

    def build(start: torch.Tensor, mask: torch.Tensor | None, seeds: Sequence[int] = (0,),
              uncond_sink=None) -> samplers.Denoiser:
        if uncond_sink is not None:
            raise ValueError("the CFG++ samplers (*_cfg_pp) need a guider with one negative prompt (CFGGuider, "
                             "BasicGuider or KSampler); DualCFGGuider is not supported with them")

        def alone(cond: Conditioning) -> samplers.Denoiser:
            return guidance.denoiser(model, guidance.prepare(model, cond, start, True, mask, seeds), [], 1.0,
                                     post_cfg=False)

        pos, mid, neg = alone(guider.positive), alone(guider.middle), alone(guider.negative)
        cfg1, cfg2 = guider.cfg, guider.cfg2

        def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            p, m, n = pos(x, sigma), mid(x, sigma), neg(x, sigma)
            if guider.style == "dual_nested":
                return n + cfg2 * ((m + (p - m) * cfg1) - n)
            return n + (m - n) * cfg2 + (p - m) * cfg1

        return run

    return build


def sample(model: DiffusionModel, guide: GuideBuilder, sampler_name: str, sigmas: torch.Tensor, noise: SeedNoise,
           latent: Latent, *, add_noise: bool = True, sampler_options: dict | None = None,
           progress: Callable[[int, int], None] | None = None, preview: Preview | None = None) -> list[Sampled]:
    """Walk `sigmas` from `latent` for every cell of `noise` (one seed each): the one sampling path of
    every sampler node. No sigmas: the latent unchanged. `preview`, when someone listens, gets each step's
    prediction of the clean latent (when the model's VAE has a latent-to-RGB projection)."""
    seeds = noise.seeds
    latent_image = latent.samples.float()
    wanted = model.unet.config.out_channels
    if latent_image.shape[1] != wanted:
        raise ValueError(f"input 'latent_image': the model denoises latents of {wanted} channels, this one has "
                         f"{latent_image.shape[1]} (made by a VAE of another model family?)")
    rows = latent_image.shape[0]
    if len(sigmas) == 0:
        return [Sampled(latent.replace(samples=latent_image.clone()), latent.replace(samples=latent_image.clone()))
                for _ in seeds]
    if add_noise:
        start_noise = noise.initial(latent_image, latent.batch_index)
    else:
        start_noise = torch.zeros((rows * len(seeds),) + tuple(latent_image.shape[1:]))

    device = torch.device(model.device)
    start = model.latent_in(latent_image) if torch.count_nonzero(latent_image) > 0 else latent_image
    start = torch.cat([start] * len(seeds)).to(device)
    start_noise, sigmas = start_noise.to(device), sigmas.to(device)
    mask = None
    if latent.noise_mask is not None:
        mask = torch.cat([_prepare_mask(latent.noise_mask, latent_image.shape).to(device)] * len(seeds))
    options = dict(sampler_options or {})
    if samplers.needs_uncond(sampler_name):
        options["uncond"] = UncondSink()
        denoiser = guide(start, mask, seeds, uncond_sink=options["uncond"])
    else:
        denoiser = guide(start, mask, seeds)
    if mask is not None:
        denoiser = _masked(denoiser, mask, start, _blend_noise(sampler_name, seeds, latent_image, start_noise), model,
                           sigmas)
    denoiser, last_denoised = _recording_first_call(denoiser)
    x = model.sampling.noise_scaling(sigmas[0], start_noise, start, model.sampling.is_max_denoise(sigmas))
    total = len(sigmas) - 1
    preview_format = latent_preview.for_model(model) if preview is not None else None

    def step(i: int) -> None:
        if preview_format is not None and last_denoised.value is not None:
            preview(i + 1, total, last_denoised.value, preview_format)
        last_denoised.step_done()
        if progress:
            progress(i + 1, total)

    with torch.no_grad(), patched(model.unet, model.patches):
        out = samplers.get(sampler_name, model.sampling)(denoiser, x, sigmas, noise, step, **options)
    out = model.latent_out(model.sampling.inverse_noise_scaling(sigmas[-1], out)).float().cpu()
    x0 = out if last_denoised.value is None else model.latent_out(last_denoised.value).float().cpu()
    return [Sampled(latent.replace(samples=out[i * rows:(i + 1) * rows]),
                    latent.replace(samples=x0[i * rows:(i + 1) * rows])) for i in range(len(seeds))]


def _blend_noise(sampler_name: str, seeds, latent_image: torch.Tensor, start_noise: torch.Tensor) -> torch.Tensor:
    """The noise that brings the kept region to each sigma: the initial noise, except for "ddim", which
    ComfyUI runs as Euler with inpaint_options random: CPU randn of seed + 1 per cell."""
    if sampler_name != "ddim":
        return start_noise
    draws = [torch.randn(latent_image.shape, generator=torch.Generator("cpu").manual_seed((s + 1) % 2 ** 64))
             for s in seeds]
    return torch.cat(draws).to(start_noise.device)


def _prepare_mask(mask, shape) -> torch.Tensor:
    """A noise mask [b or 1, 1 or more, h, w] resized to the latent (bilinear), one per channel and row."""
    mask = torch.as_tensor(mask).float()
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    mask = torch.nn.functional.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)
    return mask[:shape[0]]


def _masked(denoiser: samplers.Denoiser, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor,
            model: DiffusionModel, sigmas: torch.Tensor) -> samplers.Denoiser:
    """Sampling only where `mask` is 1: elsewhere x is the original latent noised to the current sigma,
    and the prediction is the original latent. A model's denoise_mask_function changes the mask per call."""
    fixed_keep = 1.0 - mask

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        now, keep = mask, fixed_keep
        if model.denoise_mask_function is not None:
            now = model.denoise_mask_function(sigma, mask, model, sigmas)
            keep = 1.0 - now
        level = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
        x = x * now + model.sampling.noise_scaling(level, noise, latent) * keep
        return denoiser(x, sigma) * now + latent * keep

    return run


class _FirstOfStep:
    """The first prediction of the current step (what ComfyUI's step callback sees as `denoised`)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.fresh = True

    def step_done(self) -> None:
        self.fresh = True


def _recording_first_call(denoiser: samplers.Denoiser) -> tuple[samplers.Denoiser, _FirstOfStep]:
    record = _FirstOfStep()

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = denoiser(x, sigma)
        if record.fresh:
            record.value, record.fresh = out, False
        return out

    return run, record
