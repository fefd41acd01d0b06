"""The structured values that travel on LATENT, CONDITIONING, SAMPLER, NOISE, GUIDER and CLIP_VISION_OUTPUT edges, with
ComfyUI's fields by name.

ComfyUI passes these as dicts (`{"samples": ...}`) and lists of `[tensor, {extras}]`; here they are
frozen dataclasses, so a node reads `latent.noise_mask` instead of guessing at keys, and a new kind of
conditioning (a mask, a timestep range, a ControlNet) is a field the samplers know about. Importing
this module needs no torch: the tensors are held, never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Latent:
    """A LATENT: the VAE's unscaled latents [batch, channels, height/8, width/8] and what rides along."""

    samples: Any
    noise_mask: Any | None = None  # [batch or 1, 1, h, w] in 0..1: where sampling may change the latent
    batch_index: tuple[int, ...] | None = None  # which draws of a seed's noise each row takes

    def replace(self, **changes: Any) -> "Latent":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CondEntry:
    """One entry of a CONDITIONING: a prompt's embedding and how the sampler applies it."""

    embedding: Any  # [1, tokens, width]
    pooled_output: Any | None = None  # [1, width] for models that take a pooled text embedding (SDXL)
    area: tuple[int, int, int, int] | None = None  # (height, width, y, x) in latent pixels
    area_percent: tuple[float, float, float, float] | None = None  # (height, width, y, x) as parts of the latent
    strength: float = 1.0
    set_area_to_bounds: bool = False
    mask: Any | None = None  # [1, h, w] in 0..1, applied over the latent
    mask_strength: float = 1.0
    timestep_range: tuple[float, float] | None = None  # (start_percent, end_percent) of the schedule
    control: Any | None = None  # a ControlNet (or chain) applied while this entry is sampled (diffusion/unet_inputs.Control)
    concat_latent: Any | None = None  # [b, c, h, w] VAE latent the model takes beside its input (inpainting, pix2pix)
    concat_mask: Any | None = None  # [b, 1, h, w] or [b, h, w] in 0..1: the inpainting model's mask channel
    unclip: tuple = ()  # (image_embeds [1, d], strength, noise_augmentation) per image prompt (unCLIPConditioning)
    gligen: Any | None = None  # GLIGEN boxes: a UNet patch attached while this entry is sampled
    extra: Mapping[str, Any] = field(default_factory=dict)  # family-specific (SDXL sizes, aesthetic score)

    def replace(self, **changes: Any) -> "CondEntry":
        return dataclasses.replace(self, **changes)


class Conditioning(tuple):
    """A CONDITIONING: entries the sampler combines (averaged where their areas overlap)."""

    def __new__(cls, entries: Iterable[CondEntry] = ()) -> "Conditioning":
        return super().__new__(cls, entries)

    def __add__(self, other: Iterable[CondEntry]) -> "Conditioning":  # combining keeps the type
        return Conditioning(tuple(self) + tuple(other))

    def map(self, change) -> "Conditioning":
        """A new conditioning with `change(entry)` applied to every entry."""
        return Conditioning(change(e) for e in self)


@dataclass(frozen=True)
class Sampler:
    """A SAMPLER: a sampler name (flowrun.diffusion.names.SAMPLERS) and the options it runs with."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()  # (keyword, value) pairs: eta, s_noise, r, order, solver_type

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Noise:
    """A NOISE: the initial noise a custom sampler starts from. `seed` None: none is added (DisableNoise);
    per-step noise then comes from seed 0, as in ComfyUI. `variation` (variation_seed, strength): the
    initial noise slerped towards another seed's (RandomNoiseVariation; flowrun.diffusion.noise)."""

    seed: int | None
    variation: tuple[int, float] | None = None

    @property
    def step_seed(self) -> int:
        return 0 if self.seed is None else self.seed


@dataclass(frozen=True, eq=False)
class Guider:
    """A GUIDER: a model and the conditionings that steer it, combined at each step. `style` "cfg":
    uncond + (cond - uncond) * cfg (no negative: the positive alone); "dual" and "dual_nested":
    ComfyUI's DualCFGGuider over positive (cond1), middle (cond2) and negative with cfg and cfg2."""

    model: Any  # flowrun.diffusion.model.DiffusionModel
    positive: Conditioning
    negative: Conditioning | None = None
    cfg: float = 1.0
    middle: Conditioning | None = None
    cfg2: float = 1.0
    style: str = "cfg"


@dataclass(frozen=True)
class ClipVisionOutput:
    """A CLIP_VISION_OUTPUT: what a CLIP vision model made of an image batch (ComfyUI's fields)."""

    image_embeds: Any  # [batch, projection_dim]: the projected embedding of the class token
    last_hidden_state: Any  # [batch, 1 + patches, width]: the last layer's output, before the final norm
    penultimate_hidden_states: Any  # [batch, 1 + patches, width]: the second-to-last layer's output


# classes the disk cache may rebuild from stored fields (cache/codecs.py)
STRUCTURED = {cls.__name__: cls for cls in (Latent, CondEntry, Sampler, Noise, ClipVisionOutput)}
