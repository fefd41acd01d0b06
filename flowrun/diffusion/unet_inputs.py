"""What a conditioning entry gives the UNet's forward pass beside the noisy latent, sigma and text context:
extra input channels (inpainting and instruct-pix2pix models take a latent and a mask concatenated to
their input), ControlNet / T2I-Adapter residuals, an image embedding as class labels (unCLIP), and
patches attached for the pass (GLIGEN). The sampler never needs to know which: guidance batches entries
whose inputs are alike and hands the batched inputs to DiffusionModel.__call__.

A `Control` is anything with `residuals(x, t, sigma, context, added)` that returns the UNet keyword
arguments it adds for one pass (`down_block_additional_residuals`, `mid_block_additional_residual`,
`down_intrablock_additional_residuals`) or None when it is not active at `sigma`; a chain of
ControlNets is one Control that sums its members' residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch


class Control(Protocol):
    def residuals(self, x: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                  added: dict | None) -> dict[str, Any] | None:
        """The UNet keyword arguments this control adds to one pass over `x` (the model's scaled input,
        without concatenated channels), or None where it is not active."""


@dataclass(frozen=True)
class UNetInputs:
    """One entry's inputs to the UNet beyond x, sigma, context and SDXL's added conditions; in a batched
    pass, the same fields stacked over the batch's rows."""

    concat: torch.Tensor | None = None  # [1 or rows, c, h, w]: channels appended to the model's scaled input
    control: Control | None = None
    class_labels: torch.Tensor | None = None  # [1 or rows, d]: unCLIP's noise-augmented image embedding
    patches: tuple = ()  # UNet patches (flowrun.diffusion.unet_patches) attached for this entry's passes
    # [1 or rows, c, h, w] each: latents a DiT sees beside its input (Flux Kontext), passed as `ref_latents=`
    reference_latents: tuple = ()

    def batch_key(self) -> tuple:
        """Entries whose keys are equal can share one forward pass."""
        return (self.concat is None, self.concat.shape[1] if self.concat is not None else 0, id(self.control),
                self.class_labels is None, tuple(id(p) for p in self.patches),
                tuple(tuple(r.shape[1:]) for r in self.reference_latents))

    def cropped(self, area: tuple[int, int, int, int]) -> "UNetInputs":
        """These inputs for the entry's area (height, width, y, x) of the latent."""
        if self.concat is None:
            return self
        ah, aw, ay, ax = area
        return UNetInputs(self.concat[:, :, ay:ay + ah, ax:ax + aw], self.control, self.class_labels, self.patches,
                          self.reference_latents)

    @staticmethod
    def stacked(inputs: list["UNetInputs"], rows: int) -> "UNetInputs":
        """The inputs of a batched pass: each entry's repeated over its `rows` rows, entries one after another
        (entries with equal batch keys only)."""
        first = inputs[0]

        def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([t.expand(rows, *t.shape[1:]) if t.shape[0] == 1 else t for t in tensors])

        concat = stack([i.concat for i in inputs]) if first.concat is not None else None
        labels = stack([i.class_labels for i in inputs]) if first.class_labels is not None else None
        refs = tuple(stack([i.reference_latents[k] for i in inputs]) for k in range(len(first.reference_latents)))
        return UNetInputs(concat, first.control, labels, first.patches, refs)


NONE = UNetInputs()


def for_entry(model: Any, cond: Any, latent: torch.Tensor, denoise_mask: torch.Tensor | None,
              seeds: Sequence[int] = (0,)) -> UNetInputs:
    """The UNet inputs a conditioning entry (flowrun.values.CondEntry) gives `model` while sampling
    `latent` (the model's scaled start latent, cells stacked); `denoise_mask` is the latent's noise mask
    resized to it ([rows, channels, h, w]) or None; `seeds`: the sampler's seed of each cell (unCLIP's
    image-embedding noise is drawn from it)."""
    from flowrun.diffusion import flux_inputs
    from flowrun.diffusion.concat import concat_channels
    from flowrun.diffusion.configs import FLUX
    from flowrun.diffusion.gligen_patch import unet_patches
    from flowrun.diffusion.unclip import class_labels

    flux = model.family == FLUX
    concat = (flux_inputs.concat_channels if flux else concat_channels)(model, cond, latent, denoise_mask)
    refs = flux_inputs.reference_latents(model, cond) if flux else ()
    labels = class_labels(model, cond, latent.shape[0] // max(1, len(seeds)), seeds)
    control = cond.control
    if control is not None and hasattr(control, "for_sampling"):  # an applied ControlNet (diffusion/control.py)
        control = control.for_sampling(model, latent.shape[0])
    return UNetInputs(concat=concat, control=control, class_labels=labels, patches=unet_patches(cond),
                      reference_latents=refs)
