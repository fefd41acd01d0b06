"""Moving through the latent space: variation seeds and spherical interpolation of latents.

These are flowrun's own nodes (ComfyUI core has none of them; several custom node packs have nodes of
their own under other names and fields), so `flowrun export` refuses a graph that holds them and says
which ComfyUI graph comes closest.

- RandomNoiseVariation (a NOISE for SamplerCustomAdvanced) and KSamplerVariation (KSampler with two more
  fields) start from AUTOMATIC1111's "variation seed" noise: slerp(variation_strength, the seed's noise,
  the variation seed's noise), drawn on the CPU (flowrun.diffusion.noise). Strength 0 is the seed's
  noise exactly (the same render as RandomNoise / KSampler), strength 1 the variation seed's. Only the
  initial noise varies: ancestral and SDE samplers keep drawing their per-step noise from the seed.
- LatentSlerp: LatentInterpolate's inputs and ratio, interpolated along the great circle between the
  two latents (each batch row one vector) instead of ComfyUI's per-pixel normalised blend. A separate
  node, because a mode field on LatentInterpolate would change the shape of a ComfyUI core node.
"""

from __future__ import annotations

from pydantic import Field

from flowrun.errors import NodeError
from flowrun.nodes import ports
from flowrun.nodes.fields import SEED_MAX
from flowrun.nodes.latent_ops import _shaped_like
from flowrun.nodes.sampling import KSamplerParams
from flowrun.nodes.registry import NodeParams, node
from flowrun.values import Conditioning, Latent, Noise

VARIATION_SEED = "Seed of the noise the initial noise moves towards (torch.randn on the CPU)."
VARIATION_STRENGTH = "How far along the slerp from the seed's noise (0) to the variation seed's (1)."


class RandomNoiseVariationParams(NodeParams):
    noise_seed: int = Field(0, ge=0, le=SEED_MAX, description="Initial noise: torch.randn on the CPU from this seed.")
    variation_seed: int = Field(0, ge=0, le=SEED_MAX, description=VARIATION_SEED)
    variation_strength: float = Field(0.0, ge=0.0, le=1.0, description=VARIATION_STRENGTH)


@node("RandomNoiseVariation", outputs={"noise": ports.NOISE}, category="sampling/custom_sampling/noise")
def random_noise_variation(p: RandomNoiseVariationParams, ctx) -> Noise:
    """noise_seed's noise slerped towards variation_seed's by variation_strength (A1111's variation seed);
    per-step noise stays noise_seed's."""
    return Noise(p.noise_seed, (p.variation_seed, p.variation_strength))


class KSamplerVariationParams(KSamplerParams):  # KSampler's fields in its order, then the variation's
    variation_seed: int = Field(0, ge=0, le=SEED_MAX, description=VARIATION_SEED)
    variation_strength: float = Field(0.0, ge=0.0, le=1.0, description=VARIATION_STRENGTH)


@node("KSamplerVariation", outputs={"latent": ports.LATENT}, category="sampling",
      batch=("seed", "cfg", "variation_seed", "variation_strength"))
def ksampler_variation(ps: list[KSamplerVariationParams], ctx, *, model: ports.Model, positive: Conditioning,
                       negative: Conditioning, latent_image: Latent) -> list[Latent]:
    """KSampler starting from the seed's noise slerped towards variation_seed's by variation_strength;
    cells that differ only in seeds, cfg and strength sample in one call."""
    from flowrun.diffusion.ksampler import ksample_batch

    p = ps[0]
    noise = ctx.noise([q.seed for q in ps]).varied([(q.variation_seed, q.variation_strength) for q in ps])
    try:
        return ksample_batch(model, noise=noise, cfgs=[q.cfg for q in ps], steps=p.steps,
                             sampler_name=p.sampler_name, scheduler=p.scheduler, positive=positive,
                             negative=negative, latent=latent_image, denoise=p.denoise, progress=ctx.progress,
                             preview=ctx.preview)
    except ValueError as exc:
        raise NodeError(str(exc)) from None


class LatentSlerpParams(NodeParams):
    ratio: float = Field(1.0, ge=0.0, le=1.0, description="As LatentInterpolate's: 1 gives samples1, 0 samples2.")


@node("LatentSlerp", outputs={"latent": ports.LATENT}, category="latent/advanced")
def latent_slerp(p: LatentSlerpParams, ctx, *, samples1: Latent, samples2: Latent) -> Latent:
    """samples1 and samples2 interpolated along the great circle, each batch row as one vector; ratio 1
    gives samples1 and 0 samples2 exactly (LatentInterpolate's convention). samples2 is resized to
    samples1 as LatentInterpolate does; samples1's mask and batch index are kept."""
    from flowrun.diffusion.slerp import slerp

    s1 = samples1.samples
    s2 = _shaped_like(s1, samples2.samples, "samples2", "samples1")
    return samples1.replace(samples=slerp(1.0 - p.ratio, s1.float(), s2.float()))
