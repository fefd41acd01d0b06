"""The structured values that travel on LATENT and CONDITIONING edges, with ComfyUI's fields by name.

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
    control: Any | None = None  # a ControlNet (or chain) applied while this entry is sampled
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


# classes the disk cache may rebuild from stored fields (cache/codecs.py)
STRUCTURED = {cls.__name__: cls for cls in (Latent, CondEntry)}
