"""What a seed means: every random number a render draws comes from here, on the CPU, so that a seed
gives the same image on any device and a cell gives the same image batched with others as alone.

- Initial noise: `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` for the whole
  latent batch (ComfyUI's convention); with a `batch_index`, row i takes the i-th draw, so one image of
  a batch can be re-rendered alone.
- Per-step noise of ancestral samplers: a CPU generator seeded with seed + 1 (ComfyUI's CPU convention).
- SDE samplers: a Brownian tree (torchsde) over [sigma_min, sigma_max] seeded with the seed.

A `SeedNoise` holds one seed per cell of a batched call; each cell's rows draw from their own seed.

Variation seeds (AUTOMATIC1111's): a cell may carry a (variation_seed, strength); its initial noise is then
slerp(strength, seed's noise, variation seed's noise) (flowrun.diffusion.slerp), row by row, both drawn
as above (so strength 0 is the seed's noise and strength 1 the variation seed's, exactly). Like A1111,
the result is not rescaled: a slerp between two Gaussian draws of one size keeps their length. Only the
initial noise varies; per-step noise of ancestral and SDE samplers stays the seed's.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch


def initial_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """The starting noise of one cell, shaped like `latent`."""
    generator = torch.Generator("cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(latent.shape, dtype=torch.float32, generator=generator)
    wanted = sorted(set(batch_index))
    draws = {}
    for i in range(wanted[-1] + 1):
        noise = torch.randn([1] + list(latent.shape[1:]), dtype=torch.float32, generator=generator)
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in batch_index])


Variation = tuple[int, float]  # (variation_seed, strength 0..1)


def _cell_noise(latent: torch.Tensor, seed: int, variation: Variation | None,
                batch_index: Sequence[int] | None) -> torch.Tensor:
    from flowrun.diffusion.slerp import slerp

    noise = initial_noise(latent, seed, batch_index)
    if variation is None:
        return noise
    variation_seed, strength = variation
    return slerp(strength, noise, initial_noise(latent, variation_seed, batch_index))


class SeedNoise:
    """The noise of a sampler call over several cells, one seed each, the cells' rows in seed order."""

    def __init__(self, seeds: Sequence[int], variations: Sequence[Variation | None] | None = None):
        if not seeds:
            raise ValueError("at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.variations = list(variations) if variations is not None else [None] * len(self.seeds)
        if len(self.variations) != len(self.seeds):
            raise ValueError(f"{len(self.variations)} variations for {len(self.seeds)} seeds")

    def varied(self, variations: Sequence[Variation | None]) -> "SeedNoise":
        """The same seeds, each cell's initial noise moved towards its variation seed's."""
        return SeedNoise(self.seeds, variations)

    def initial(self, latent: torch.Tensor, batch_index: Sequence[int] | None = None) -> torch.Tensor:
        """Starting noise for every cell: each cell's latent rows from its seed (slerped towards its
        variation seed's), cells stacked in order."""
        return torch.cat([_cell_noise(latent, s, v, batch_index) for s, v in zip(self.seeds, self.variations)])

    def chunks(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """[(seed, rows)]: the rows of the batch `x` that draw from each seed."""
        rows = x.shape[0] // len(self.seeds)
        return [(s, rows) for s in self.seeds]

    def gaussian(self, x: torch.Tensor):
        """Per-step noise for ancestral samplers: draw(sigma, sigma_next) -> noise shaped like x."""
        gens = [(torch.Generator("cpu").manual_seed((s + 1) % 2**64), n) for s, n in self.chunks(x)]
        shape = tuple(x.shape[1:])

        def draw(sigma, sigma_next):
            parts = [torch.randn((n,) + shape, dtype=x.dtype, generator=g) for g, n in gens]
            return torch.cat(parts).to(x.device)

        return draw

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor) -> "BrownianNoise":
        """Per-step noise for SDE samplers, consistent over any interval of the schedule."""
        return BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), self.chunks(x))


class BrownianNoise:
    """Noise from Brownian trees over [sigma_min, sigma_max], one per cell: queries of any interval are
    consistent, and a cell's noise does not depend on the other cells of its batch."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, chunks: list[tuple[int, int]]):
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min).detach().cpu().float(), torch.as_tensor(sigma_max).detach().cpu().float()
        self.sign = 1
        if t0 > t1:
            t0, t1, self.sign = t1, t0, -1
        shape = tuple(x.shape[1:])
        self.trees = [torchsde.BrownianTree(t0, torch.zeros((n,) + shape), t1, entropy=s) for s, n in chunks]
        self.device, self.dtype = x.device, x.dtype

    def __call__(self, sigma, sigma_next):
        a, b = torch.as_tensor(sigma).detach().cpu().float(), torch.as_tensor(sigma_next).detach().cpu().float()
        sign = 1
        if a > b:
            a, b, sign = b, a, -1
        with warnings.catch_warnings():  # float32 endpoints a hair past the interval; the tree clamps them
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)
            w = torch.cat([tree(a, b) for tree in self.trees]) * (self.sign * sign)
        return w.to(self.device, self.dtype) / (b - a).abs().sqrt().to(self.device)
