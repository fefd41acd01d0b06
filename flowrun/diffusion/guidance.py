"""Classifier-free guidance over CONDITIONING lists, with ComfyUI's regional (area) conditioning.

Each conditioning entry is run on its area of the latent (the whole latent when it has none), weighted by
its strength and feathered over 8 latent pixels at inner edges, or weighted by its mask (resized to the
latent; with set_area_to_bounds, only the mask's bounding rectangle is run); overlapping predictions are
averaged by weight. An entry with a timestep range takes part only while sigma is inside it. Positive and negative entries with the same area shape share one batched forward pass
([negative..., positive...], as diffusers orders them). Then D = uncond + (cond - uncond) * cfg; with
cfg = 1 the negative prompt is not run at all (unless a post-cfg function such as SAG needs it); the
model's post-cfg functions then refine D in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from flowrun.diffusion.added_inputs import added_inputs
from flowrun.diffusion.model import DiffusionModel
from flowrun.diffusion.post_cfg import PostCfg
from flowrun.diffusion.unet_inputs import NONE, UNetInputs, for_entry
from flowrun.diffusion.unet_patches import Pass
from flowrun.values import Conditioning

FEATHER = 8
MAX_PAD_RATIO = 4  # contexts of different lengths are batched by repetition up to this ratio, as ComfyUI does


@dataclass
class Entry:
    context: torch.Tensor  # [1, tokens, width]
    area: tuple[int, int, int, int] | None  # (height, width, y, x) in latent pixels
    strength: float
    added: dict[str, torch.Tensor] | None
    positive: bool
    mask: torch.Tensor | None = None  # [batch or 1, h, w] at the latent's size, times mask_strength
    sigmas: tuple[float, float] | None = None  # applies while sigma_end <= sigma <= sigma_start
    inputs: UNetInputs = NONE  # extra channels, ControlNet, unCLIP labels, GLIGEN (diffusion/unet_inputs.py)

    def active(self, sigma: torch.Tensor) -> bool:
        if self.sigmas is None:
            return True
        value = float(sigma.flatten()[0])
        return self.sigmas[1] <= value <= self.sigmas[0]


def _latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A conditioning mask [n, H, W] resized (bilinear) to the latent's h x w, as ComfyUI resizes it."""
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != (h, w):
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear",
                                               align_corners=False).squeeze(1)
    return mask


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(height, width, y, x) of the rectangle where the mask is not zero (the whole mask if nowhere)."""
    where = torch.nonzero(mask.abs().amax(dim=0) > 0)
    if where.numel() == 0:
        return (mask.shape[1], mask.shape[2], 0, 0)
    (y0, x0), (y1, x1) = where.min(dim=0).values.tolist(), where.max(dim=0).values.tolist()
    return (y1 - y0 + 1, x1 - x0 + 1, y0, x0)


def prepare(model: DiffusionModel, conditioning: Conditioning, latent: torch.Tensor, positive: bool,
            denoise_mask: torch.Tensor | None = None, seeds: Sequence[int] = (0,)) -> list[Entry]:
    """The entries of a conditioning, resolved against the scaled start latent (and the sampler's noise
    mask, resized to it, which inpainting models also take as input); `seeds`: each cell's sampler seed."""
    h, w = latent.shape[2], latent.shape[3]
    entries = []
    for cond in conditioning:
        area = cond.area
        if cond.area_percent is not None:
            ph, pw, py, px = cond.area_percent
            area = (max(1, round(ph * h)), max(1, round(pw * w)), round(py * h), round(px * w))
        mask = None
        if cond.mask is not None:
            mask = _latent_mask(cond.mask, h, w)
            if cond.set_area_to_bounds:
                area = _bounds(mask)
            mask = mask * float(cond.mask_strength)
        if area is not None:
            ah, aw, ay, ax = (int(v) for v in area)
            ay, ax = min(ay, h - 1), min(ax, w - 1)
            area = (max(1, min(ah, h - ay)), max(1, min(aw, w - ax)), ay, ax)
        sigmas = None
        if cond.timestep_range is not None:
            start, end = cond.timestep_range
            sigmas = (model.sampling.percent_to_sigma(start), model.sampling.percent_to_sigma(end))
        try:
            added = added_inputs(model, cond, positive, h, w)
            inputs = for_entry(model, cond, latent, denoise_mask, seeds)
        except ValueError as exc:  # say which conditioning input it came from
            raise ValueError(f"input '{'positive' if positive else 'negative'}': {exc}") from None
        entries.append(Entry(cond.embedding.float(), area, float(cond.strength), added, positive, mask, sigmas, inputs))
    return entries


def mirror_areas(positive: list[Entry], negative: list[Entry]) -> list[Entry]:
    """Give each positive area a negative entry over the same area (from the smallest negative that covers
    it, or one without area), so guidance compares like with like; as ComfyUI does."""
    out = list(negative)
    for p in positive:
        if p.area is None:
            continue
        best = None
        for n in negative:
            if n.area is None:
                best = best or n
            elif _covers(n.area, p.area) and (best is None or best.area is None or
                                               n.area[0] * n.area[1] < best.area[0] * best.area[1]):
                best = n
        if best is not None and best.area != p.area:  # where and when the positive applies, the negative's prompt
            out.append(Entry(best.context, p.area, p.strength, best.added, False, p.mask, p.sigmas, best.inputs))
    return out


def _covers(outer, inner) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3] and outer[0] + outer[2] >= inner[0] + inner[2]
            and outer[1] + outer[3] >= inner[1] + inner[3])


def _mult(entry: Entry, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = x.shape[2], x.shape[3]
    area = entry.area or (h, w, 0, 0)
    ah, aw, ay, ax = area
    if entry.mask is not None:  # a mask weighs each pixel itself: no feathering
        mask = entry.mask[:x.shape[0], ay:ay + ah, ax:ax + aw].to(x.device, x.dtype)
        mask = mask.unsqueeze(1).repeat(x.shape[0] // mask.shape[0], x.shape[1], 1, 1)
        return mask * entry.strength, area
    mult = torch.ones((x.shape[0], x.shape[1], ah, aw), dtype=x.dtype, device=x.device) * entry.strength
    if entry.area is not None:
        for t in range(FEATHER):
            f = (t + 1) / FEATHER
            if ay != 0:
                mult[:, :, t:t + 1, :] *= f
            if ay + ah < h:
                mult[:, :, ah - 1 - t:ah - t, :] *= f
            if ax != 0:
                mult[:, :, :, t:t + 1] *= f
            if ax + aw < w:
                mult[:, :, :, aw - 1 - t:aw - t] *= f
    return mult, area


def _pad_contexts(contexts: list[torch.Tensor]) -> list[torch.Tensor] | None:
    lengths = [c.shape[1] for c in contexts]
    target = math.lcm(*lengths)
    if target // min(lengths) > MAX_PAD_RATIO:
        return None
    return [c.repeat(1, target // c.shape[1], 1) for c in contexts]


def _batches(entries: list[Entry]) -> list[list[Entry]]:
    groups: list[list[Entry]] = []
    for e in reversed(entries):
        for g in groups:
            shape = (g[0].area or ())[:2]
            if ((e.area or ())[:2] == shape and e.inputs.batch_key() == g[0].inputs.batch_key()
                    and _pad_contexts([g[0].context, e.context]) is not None):
                g.append(e)
                break
        else:
            groups.append([e])
    return groups


def denoiser(model: DiffusionModel, positive: list[Entry], negative: list[Entry], cfg, post_cfg: bool = True,
             uncond_sink=None):
    """D(x, sigma) with guidance, for the samplers. `cfg` is one scale, or one per batch row (cells of a
    batched sweep that differ in cfg). The model's post-cfg functions (PAG, SAG) then refine the result,
    unless `post_cfg` is off (the single predictions a dual guider combines). With an `uncond_sink` (a CFG++
    sampler's), every call leaves the unconditional prediction there, computed even at cfg 1 (zeros
    without a negative prompt), as ComfyUI's CFG++ samplers turn its cfg-1 shortcut off."""
    scales = [float(c) for c in cfg] if isinstance(cfg, (list, tuple)) else [float(cfg)]
    post = model.post_cfg_functions if post_cfg else ()
    use_negative = not all(math.isclose(c, 1.0) for c in scales) or uncond_sink is not None or (
        bool(negative) and any(getattr(fn, "needs_uncond", False) for fn in post))
    if len(scales) > 1:
        cfg = torch.tensor(scales, dtype=torch.float32).view(-1, 1, 1, 1)
    negatives = mirror_areas(positive, negative) if use_negative else []
    entries = positive + negatives
    state: dict = {}  # one sampling run's scratch, shared by UNet patches and post-cfg functions

    def predict(chosen: list[Entry], x: torch.Tensor, sigma: torch.Tensor, extra: tuple = ()):
        out = {True: torch.zeros_like(x), False: torch.zeros_like(x)}
        count = {True: torch.full_like(x, 1e-37), False: torch.full_like(x, 1e-37)}
        for group in _batches(chosen):
            group = [e for e in group if e.active(sigma)]
            if not group:
                continue
            xs, mults, areas, inputs = [], [], [], []
            for e in group:
                mult, area = _mult(e, x)
                ah, aw, ay, ax = area
                xs.append(x[:, :, ay:ay + ah, ax:ax + aw])
                mults.append(mult)
                areas.append(area)
                inputs.append(e.inputs.cropped(area))
            n = len(group)
            contexts = _pad_contexts([e.context for e in group])
            batch_x = torch.cat(xs)
            context = torch.cat([c.expand(x.shape[0], -1, -1) for c in contexts])
            added = None
            if group[0].added is not None:
                added = {k: torch.cat([e.added[k].expand(x.shape[0], -1) for e in group]) for k in group[0].added}
            whole = [i for i, e in enumerate(group) if not e.positive and e.area is None and e.mask is None]
            rows = slice(whole[0] * x.shape[0], (whole[0] + 1) * x.shape[0]) if whole else None
            batch_sigma = torch.cat([sigma] * n)
            preds = model(batch_x, batch_sigma, context, added, extra=extra, info=Pass(batch_sigma, rows, state),
                          inputs=UNetInputs.stacked(inputs, x.shape[0])).chunk(n)
            for e, pred, mult, (ah, aw, ay, ax) in zip(group, preds, mults, areas):
                out[e.positive][:, :, ay:ay + ah, ax:ax + aw] += pred * mult
                count[e.positive][:, :, ay:ay + ah, ax:ax + aw] += mult
        return out[True] / count[True], out[False] / count[False]

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        state.clear()
        cond, uncond = predict(entries, x, sigma)
        if uncond_sink is not None:
            uncond_sink.value = uncond
        if not use_negative:
            result, uncond = cond, None
        else:
            scale = cfg.to(x.device) if isinstance(cfg, torch.Tensor) else cfg
            if model.cfg_function is not None:
                result = model.cfg_function(cond, uncond, scale, x, sigma)
            else:
                result = uncond + (cond - uncond) * scale
        for fn in post:
            result = fn(PostCfg(result, cond, uncond, x, sigma, state,
                                cond_pass=lambda x_, extra=(): predict(positive, x_, sigma, extra)[0],
                                uncond_pass=lambda x_, extra=(): predict(negatives, x_, sigma, extra)[1]))
        return result

    return run
