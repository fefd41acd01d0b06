"""Functions applied after guidance (ComfyUI's sampler_post_cfg_function list), in the order the patches
were stacked, each turning the guided prediction into a new one; and the attention processors they swap
into the UNet's middle block for one forward pass.

Perturbed-Attention Guidance (Ahn et al. 2024) steers away from a prediction whose middle-block
self-attention is replaced by the identity; Self-Attention Guidance (Hong et al. 2023) steers away from a
prediction of the unconditional result blurred where the middle block attends most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from flowrun.diffusion.unet_patches import Pass


@dataclass
class PostCfg:
    """What a post-cfg function sees at one model call: the guided result, the conditional and (unless
    guidance was skipped at cfg 1) unconditional predictions, the noisy latent and its sigma, the run's
    scratch state, and ways to run the positive or negative prompts again with extra UNet patches."""

    denoised: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor | None
    x: torch.Tensor
    sigma: torch.Tensor
    state: dict
    cond_pass: Callable[..., torch.Tensor]  # (x, extra=()) -> the positive prediction
    uncond_pass: Callable[..., torch.Tensor]  # (x, extra=()) -> the negative prediction


def _swap(attns: list, processor) -> list:
    """Set `processor` on each attention module; handles that put the old ones back."""
    class Undo:
        def __init__(self, attn, old):
            self.attn, self.old = attn, old

        def remove(self):
            self.attn.set_processor(self.old)

    undo = [Undo(a, a.processor) for a in attns]
    for a in attns:
        a.set_processor(processor)
    return undo


def _finish(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class IdentitySelfAttention:
    """Self-attention whose attention map is the identity: each token's output is its own value."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError("perturbed attention expects a transformer block's self-attention")
        return _finish(attn, attn.to_v(hidden_states), hidden_states)


class RecordingSelfAttention:
    """Plain softmax self-attention that keeps the attention map of the unconditional rows in `state`."""

    def __init__(self, rows: slice, state: dict):
        self.rows, self.state = rows, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if hidden_states.ndim != 3 or encoder_hidden_states is not None:
            raise ValueError("self-attention guidance records a transformer block's self-attention")
        q, k, v = (attn.head_to_batch_dim(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        probs = attn.get_attention_scores(q, k, None)
        heads = attn.heads
        self.state["sag_attention"] = probs[self.rows.start * heads:self.rows.stop * heads]
        return _finish(attn, attn.batch_to_head_dim(torch.bmm(probs, v)), hidden_states)


def _middle_self_attentions(unet: Any, first_only: bool) -> list:
    blocks = unet.mid_block.attentions[0].transformer_blocks
    return [b.attn1 for b in (blocks[:1] if first_only else blocks)]


@dataclass(frozen=True)
class PerturbMiddleAttention:
    """UNet patch for PAG's extra pass: every self-attention of the middle block's first transformer
    (ComfyUI's ("middle", 0)) becomes the identity."""

    def attach(self, unet: Any, info: Pass) -> list:
        return _swap(_middle_self_attentions(unet, first_only=False), IdentitySelfAttention())


@dataclass(frozen=True)
class RecordMiddleAttention:
    """UNet patch for SAG: on passes that include the unconditional prediction, the first self-attention
    of the middle block (ComfyUI's ("middle", 0, 0)) records its attention map."""

    def attach(self, unet: Any, info: Pass) -> list:
        if info.uncond_rows is None:
            return []
        return _swap(_middle_self_attentions(unet, first_only=True), RecordingSelfAttention(info.uncond_rows,
                                                                                           info.state))


@dataclass(frozen=True)
class PerturbedAttentionGuidance:
    """denoised + scale * (cond - cond with the middle block's self-attention perturbed)."""

    scale: float

    def __call__(self, a: PostCfg) -> torch.Tensor:
        if self.scale == 0:
            return a.denoised
        perturbed = a.cond_pass(a.x, extra=(PerturbMiddleAttention(),))
        return a.denoised + (a.cond - perturbed) * self.scale


def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur per channel, reflect-padded, the kernel no wider than the image (odd), as ComfyUI's
    SAG blurs; sigma 0 is no blur (the kernel's limit, where ComfyUI's formula divides by zero)."""
    if sigma <= 0:
        return img
    width = img.shape[-1]
    kernel_size = min(kernel_size, width - (width % 2 - 1))
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad, pad, pad, pad], mode="reflect"), kernel, groups=img.shape[-3])


def blur_where_attended(x0: torch.Tensor, attn: torch.Tensor, sigma: float, threshold: float = 1.0) -> torch.Tensor:
    """x0 blurred where the head-averaged attention a token receives exceeds `threshold`, as SAG's paper
    and ComfyUI compute it (the map, at the middle block's resolution, upsampled to the latent's)."""
    _, hw1, hw2 = attn.shape
    b, _, lh, lw = x0.shape
    attn = attn.reshape(b, -1, hw1, hw2)
    mask = attn.mean(1, keepdim=False).sum(1, keepdim=False) > threshold
    ratio = 2 ** (math.ceil(math.sqrt(lh * lw / hw1)) - 1).bit_length()
    mask = mask.reshape(b, math.ceil(lh / ratio), math.ceil(lw / ratio)).unsqueeze(1).type(attn.dtype)
    mask = F.interpolate(mask, (lh, lw))
    return gaussian_blur(x0, 9, sigma) * mask + x0 * (1 - mask)


@dataclass(frozen=True)
class SelfAttentionGuidance:
    """denoised + scale * (blurred uncond - uncond predicted again from the blurred one, re-noised)."""

    scale: float
    blur_sigma: float
    needs_uncond = True  # guidance runs the negative prompt even at cfg 1

    def __call__(self, a: PostCfg) -> torch.Tensor:
        attn = a.state.get("sag_attention")
        if a.uncond is None or attn is None or min(a.denoised.shape[2:]) <= 4:  # too small to pad the blur
            return a.denoised
        degraded = blur_where_attended(a.uncond, attn.to(a.uncond.dtype), self.blur_sigma)
        sag = a.uncond_pass(degraded + a.x - a.uncond)
        return a.denoised + (degraded - sag) * self.scale
