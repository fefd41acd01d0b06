"""Patches that act inside the UNet's forward pass (FreeU, Kohya deep shrink, attention swaps), attached as
torch hooks or attention-processor swaps for one forward pass and removed right after it, so a UNet shared
by other model values stays clean.

Blocks are named as ComfyUI's UNet names them: input block k is the k-th skip the down path stores
(conv_in, each resnet(+attention) layer, each downsampler), and an output block joins the hidden state h
with one stored skip hsp. In diffusers' UNet2DConditionModel the join happens inside the up block, right
before each of its resnets: torch.cat([h, hsp]) is that resnet's input.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from flowrun.diffusion.resize import upscale


@dataclass
class Pass:
    """What patches may know about one forward pass: its sigma, which rows are the unconditional
    prediction of the whole latent (if any), and a scratch dict that lives as long as one sampling run
    (shared with the post-cfg functions of that run)."""

    sigma: torch.Tensor
    uncond_rows: slice | None = None
    state: dict = field(default_factory=dict)


class _Undo:
    def __init__(self, fn) -> None:
        self.remove = fn


@contextlib.contextmanager
def attached(unet: Any, patches: tuple, info: Pass) -> Iterator[None]:
    """Each patch's hooks on `unet` for the block, then removed (in reverse order), even on error."""
    handles: list = []
    try:
        for patch in patches:
            handles.extend(patch.attach(unet, info))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


# --- FreeU ------------------------------------------------------------------------------------------------

def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest frequencies of x (a centred 2*threshold square of its shifted 2-D spectrum) by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape[-2:], device=x.device)
    ch, cw = h // 2, w // 2
    mask[ch - threshold:ch + threshold, cw - threshold:cw + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_backbone(h: torch.Tensor, b: float, v2: bool) -> torch.Tensor:
    """FreeU's backbone scaling of the first half of h's channels: by b (v1), or by 1 + (b - 1) * the
    channel-mean map normalised to 0..1 per row (v2)."""
    half = h.shape[1] // 2
    if v2:
        mean = h.mean(1, keepdim=True)
        flat = mean.view(mean.shape[0], -1)
        lo = flat.min(dim=-1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=-1).values.view(-1, 1, 1, 1)
        factor = (b - 1) * ((mean - lo) / (hi - lo)) + 1
    else:
        factor = b
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


def _up_joins(unet: Any) -> list[tuple[torch.nn.Module, int]]:
    """(resnet, channels of h) for every resnet of the up path: its input is cat([h, hsp])."""
    joins, channels = [], unet.config.block_out_channels[-1]  # the middle block keeps the deepest width
    for block in unet.up_blocks:
        for resnet in block.resnets:
            joins.append((resnet, channels))
            channels = resnet.out_channels
    return joins


@dataclass(frozen=True)
class FreeU:
    """Si et al. 2023 ("FreeU: Free Lunch in Diffusion U-Net"), as ComfyUI applies it: at every output
    block whose h has model_channels * 4 channels, half of h scaled by b1 and the skip's low frequencies
    by s1; at model_channels * 2, b2 and s2. (diffusers' enable_freeu picks blocks by resolution instead.)"""

    b1: float
    b2: float
    s1: float
    s2: float
    v2: bool = False

    def attach(self, unet: Any, info: Pass) -> list:
        base = unet.config.block_out_channels[0]
        scales = {base * 4: (self.b1, self.s1), base * 2: (self.b2, self.s2)}
        handles = []
        for resnet, channels in _up_joins(unet):
            if channels not in scales:
                continue
            b, s = scales[channels]

            def hook(module, args, b=b, s=s, channels=channels):
                joined = args[0]
                h, hsp = joined[:, :channels], joined[:, channels:]
                return (torch.cat([freeu_backbone(h, b, self.v2), fourier_filter(hsp, 1, s)], dim=1),) + args[1:]

            handles.append(resnet.register_forward_pre_hook(hook))
        return handles


# --- Kohya deep shrink ------------------------------------------------------------------------------------

def _down_groups(unet: Any) -> list[list[torch.nn.Module]]:
    """The down path in ComfyUI's input blocks, each the modules that make one stored skip, in order."""
    groups = [[unet.conv_in]]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for i, resnet in enumerate(block.resnets):
            groups.append([resnet] + ([attentions[i]] if attentions is not None else []))
        for downsampler in block.downsamplers or []:
            groups.append([downsampler])
    return groups


def _up_producers(unet: Any) -> tuple[list[torch.nn.Module], list[tuple[torch.nn.Module, int]]]:
    """For each up-path resnet in order, the module whose output is its h; and each upsampler with the
    index of the resnet that follows it."""
    producers, upsamplers, last, r = [], [], unet.mid_block, 0
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for i, resnet in enumerate(block.resnets):
            producers.append(last)
            last = attentions[i] if attentions is not None else resnet
            r += 1
        for upsampler in block.upsamplers or []:
            upsamplers.append((upsampler, r))
            last = upsampler
    return producers, upsamplers


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, value):
    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value


@dataclass(frozen=True)
class DeepShrink:
    """Kohya's deep shrink (ComfyUI's PatchModelAddDownscale): while sigma_end <= sigma <= sigma_start,
    the hidden state after input block `block_number` is downscaled by `factor` (the stored skip too,
    unless `after_skip`); on the way up, h is resized to each skip's size where they differ, and every
    upsampler aims at the next skip's size, as ComfyUI's UNet does."""

    block_number: int
    factor: float
    sigma_start: float
    sigma_end: float
    after_skip: bool
    downscale_method: str
    upscale_method: str

    def _shrink(self, h: torch.Tensor) -> torch.Tensor:
        width, height = round(h.shape[-1] * (1.0 / self.factor)), round(h.shape[-2] * (1.0 / self.factor))
        return upscale(h, width, height, self.downscale_method, "disabled")

    def attach(self, unet: Any, info: Pass) -> list:
        sigma = float(info.sigma.flatten()[0])
        active = self.sigma_end <= sigma <= self.sigma_start
        groups = _down_groups(unet)
        skips: list[tuple[int, int]] = []
        handles = []

        for k, group in enumerate(groups):
            def record(module, args, output, k=k):
                h = _first(output)
                if active and k == self.block_number and not self.after_skip:
                    h = self._shrink(h)
                    output = _with_first(output, h)
                skips.append(tuple(h.shape[-2:]))
                return output

            handles.append(group[-1].register_forward_hook(record))
        if active and self.after_skip and self.block_number < len(groups):
            consumer = groups[self.block_number + 1][0] if self.block_number + 1 < len(groups) else unet.mid_block
            handles.append(consumer.register_forward_pre_hook(
                lambda module, args: (self._shrink(args[0]),) + args[1:]))

        producers, upsamplers = _up_producers(unet)
        for r, producer in enumerate(producers):
            def fit(module, args, output, r=r):
                h, size = _first(output), skips[len(skips) - 1 - r]
                if tuple(h.shape[-2:]) != size:
                    output = _with_first(output, upscale(h, size[1], size[0], self.upscale_method, "disabled"))
                return output

            handles.append(producer.register_forward_hook(fit))
        for upsampler, r in upsamplers:
            def aim(module, args, r=r):
                return (args[0], skips[len(skips) - 1 - r]) + args[2:]

            handles.append(upsampler.register_forward_pre_hook(aim))
        return handles
