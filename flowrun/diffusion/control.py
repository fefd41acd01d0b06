"""A ControlNet or T2I-Adapter applied to conditioning entries with a hint image, as ComfyUI's
ControlNetApplyAdvanced makes it: a copy of the loaded control with the hint, a strength and a (start, end)
percent range, chained to the control the entry already had (its residuals are summed with this one's).

While sampling, `for_sampling(model, rows)` checks the chain against the model and gives the object the
UNet pass calls (diffusion/unet_inputs.Control): `residuals(x, t, sigma, context, added)`. The hint is
resized to the pass's latent size x 8 (nearest-exact, centre crop: ComfyUI's common_upscale) and
broadcast to its rows; a ControlNet runs once per pass on the same scaled input, timestep and text
context as the UNet, its residuals times strength going to `down_block_additional_residuals` and
`mid_block_additional_residual`; a T2I-Adapter runs once per hint (not per step: its output does not
depend on the latent), its features times strength going to `down_intrablock_additional_residuals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flowrun.diffusion.configs import SD1, SD2
from flowrun.diffusion.controlnet_files import CONTROLNET, FAMILY_NAMES, ControlFile
from flowrun.diffusion.resize import upscale

COMPRESSION = 8  # latent pixels -> image pixels for the SD families


@dataclass(eq=False)
class AppliedControl:
    """A control with its hint (IMAGE layout [b, h, w, c] in 0..1), strength, percent range and the control
    it was chained to. Compared by identity: entries sharing one batch pass share one object."""

    file: ControlFile
    hint: Any
    strength: float
    percent: tuple[float, float] = (0.0, 1.0)
    previous: "AppliedControl | None" = None
    _bound: dict = field(default_factory=dict, repr=False)

    def chain(self) -> list["AppliedControl"]:
        """This control and those before it, first applied first."""
        return (self.previous.chain() if self.previous is not None else []) + [self]

    def check(self, model: Any) -> None:
        """Raise ValueError naming both families where a control of the chain is for another model family."""
        for c in self.chain():
            # an SD1 T2I-Adapter's features fit SD2's UNet too (same widths), as in ComfyUI; a ControlNet is
            # a copy of its family's UNet encoder and fits that family only
            fits = {c.file.family} | ({SD2} if c.file.kind != CONTROLNET and c.file.family == SD1 else set())
            if model.family not in fits:
                what = "ControlNet" if c.file.kind == CONTROLNET else "T2I-Adapter"
                raise ValueError(f"the {what} '{c.file.name}' is for {FAMILY_NAMES.get(c.file.family, c.file.family)} "
                                 f"models, the model is {FAMILY_NAMES.get(model.family, model.family)}")
            width = getattr(c.file.module.config, "cross_attention_dim", None)
            model_width = model.unet.config.cross_attention_dim
            if c.file.kind == CONTROLNET and width is not None and width != model_width:
                raise ValueError(f"the ControlNet '{c.file.name}' takes a text context {width} wide, the model's "
                                 f"is {model_width}: it was made for another {FAMILY_NAMES.get(model.family)} model")

    def for_sampling(self, model: Any, rows: int) -> "SamplingControl":
        """The object one sampling run's UNet passes call, for latents of `rows` rows (one per entry batch:
        the same object for every entry carrying this control, so they share a pass)."""
        key = (id(model), rows)
        if key not in self._bound:
            self.check(model)
            previous = self.previous.for_sampling(model, rows) if self.previous is not None else None
            sampling = model.sampling
            sigmas = (sampling.percent_to_sigma(self.percent[0]), sampling.percent_to_sigma(self.percent[1]))
            self._bound = {key: SamplingControl(self, previous, sigmas, rows, model.dtype)}
        return self._bound[key]


def _broadcast(t: torch.Tensor, target: int, per_batch: int) -> torch.Tensor:
    """ComfyUI's broadcast_image_to: a hint batch spread over `per_batch` rows (cycled), repeated for each
    entry of the pass."""
    if t.shape[0] == 1:
        return t.expand(target, *t.shape[1:])
    t = t[:per_batch]
    if per_batch > t.shape[0]:
        t = torch.cat([t] * (per_batch // t.shape[0]) + [t[:per_batch % t.shape[0]]])
    return t if t.shape[0] == target else torch.cat([t] * (target // per_batch))


def _summed(mine: dict | None, previous: dict | None) -> dict | None:
    if mine is None or previous is None:
        return mine if previous is None else previous
    out = dict(previous)
    for key, value in mine.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [a + b for a, b in zip(value, out[key])]
        else:
            out[key] = value + out[key]
    return out


class SamplingControl:
    """One applied control during one sampling run (unet_inputs.Control)."""

    def __init__(self, applied: AppliedControl, previous: "SamplingControl | None", sigmas: tuple[float, float],
                 rows: int, dtype: torch.dtype = torch.float32):
        self.applied, self.previous, self.rows = applied, previous, rows
        self.dtype = dtype  # the UNet's: residuals are added to its activations
        self.sigma_start, self.sigma_end = sigmas
        self._hints: dict = {}
        self._features: dict = {}

    def active(self, sigma: torch.Tensor) -> bool:
        value = float(sigma.flatten()[0])
        return self.sigma_end <= value <= self.sigma_start

    def hint(self, height: int, width: int, device, dtype) -> torch.Tensor:
        """The hint at height x width, [rows, c, h, w] (resized once per size)."""
        key = (height, width)
        if key not in self._hints:
            image = torch.as_tensor(self.applied.hint).float().movedim(-1, 1)
            module = self.applied.file.module
            if self.applied.file.kind != CONTROLNET:  # the adapter's unshuffle needs whole multiples, as ComfyUI rounds up
                factor = int(module.config.downscale_factor)
                height, width = -(-height // factor) * factor, -(-width // factor) * factor
                if int(module.config.in_channels) == 1 and image.shape[1] > 1:
                    image = image.mean(dim=1, keepdim=True)
            image = upscale(image, width, height, "nearest-exact", "center")
            self._hints[key] = _broadcast(image, self.rows, self.rows).to(device, dtype)
        return self._hints[key]

    def residuals(self, x: torch.Tensor, t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                  added: dict | None) -> dict | None:
        previous = self.previous.residuals(x, t, sigma, context, added) if self.previous is not None else None
        if not self.active(sigma):
            return previous
        module = self.applied.file.module
        dtype = next(module.parameters()).dtype
        hint = self.hint(x.shape[2] * COMPRESSION, x.shape[3] * COMPRESSION, x.device, dtype)
        per_pass = x.shape[0] // self.rows
        strength = self.applied.strength
        if self.applied.file.kind == CONTROLNET:
            hint = _broadcast(hint, x.shape[0], self.rows)
            kwargs = {} if added is None else {"added_cond_kwargs": {k: v.to(dtype) for k, v in added.items()}}
            down, mid = module(x.to(dtype), t, encoder_hidden_states=context.to(dtype), controlnet_cond=hint,
                               conditioning_scale=strength, return_dict=False, **kwargs)
            mine = {"down_block_additional_residuals": [d.to(self.dtype) for d in down],
                    "mid_block_additional_residual": mid.to(self.dtype)}
        else:
            key = hint.data_ptr()
            if key not in self._features:  # once per hint, as ComfyUI: the adapter does not see the latent
                with torch.no_grad():
                    self._features[key] = module(hint)
            mine = {"down_intrablock_additional_residuals": [
                torch.cat([f] * per_pass).to(self.dtype) * strength for f in self._features[key]]}
        return _summed(mine, previous)


APPLY_TO_UNCOND = "control_apply_to_uncond"  # CondEntry.extra: ControlNetApply's controls also steer the negative


def _whole(entry: Any) -> bool:
    return entry.area is None and entry.area_percent is None


def controls_to_uncond(positive: Any, negative: Any) -> Any:
    """The negative conditioning with the positive's ControlNetApply controls given to its whole-latent
    entries that have none, as ComfyUI's sampler does (apply_empty_x_to_equal_area): only when no such
    negative entry has a control of its own; controls in turn over the entries, extra ones as copies."""
    from flowrun.values import Conditioning

    controls = [e.control for e in positive if e.extra.get(APPLY_TO_UNCOND) and _whole(e) and e.control is not None]
    entries = list(negative)
    if not controls or any(_whole(e) and e.control is not None for e in entries):
        return negative
    free = [i for i, e in enumerate(entries) if _whole(e)]
    if not free:
        return negative
    for n, control in enumerate(controls):
        index = free[n % len(free)]
        if entries[index].control is not None:
            entries.append(entries[index].replace(control=control))
        else:
            entries[index] = entries[index].replace(control=control)
    return Conditioning(entries)
