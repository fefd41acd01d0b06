"""Flux.1's prompt encoding, as ComfyUI's FluxClipModel: the T5-XXL tokens are the context (at least 256 tokens,
ComfyUI's Flux tokenizer's min_length, padded with 0 and never cut), CLIP-L gives only its pooled output
(the final-layer-normed state at the first end token of the first 77-token chunk, without projection:
transformers' pooler_output, what diffusers' FluxPipeline reads too). The CLIP value's models are
[clip_l, t5xxl]; a guidance value rides on the entry's `extra["guidance"]`.
"""

from __future__ import annotations

import torch

from flowrun.diffusion import t5
from flowrun.diffusion.clip_tokens import END, tokenize
from flowrun.diffusion.model import TextEncoder
from flowrun.values import CondEntry, Conditioning

T5_MIN_LENGTH = 256


def pooled_clip_l(enc: TextEncoder, text: str) -> torch.Tensor:
    """CLIP-L's pooled output [1, 768] for a prompt: its first chunk's (weights do not reach it, as in ComfyUI)."""
    chunk = tokenize(enc.tokenizer, text, END)[0]
    with torch.no_grad():
        out = enc.models[0](input_ids=torch.tensor([[int(t) for t, _ in chunk]]))
    return out.pooler_output[0:1].float()


def context_t5(enc: TextEncoder, text: str) -> torch.Tensor:
    """T5-XXL's last hidden state [1, max(256, tokens), 4096] with the prompt's weights applied."""
    return t5.encode(enc.models[1], t5.tokenize(text, T5_MIN_LENGTH))


def encode(enc: TextEncoder, clip_l: str, t5xxl: str, guidance: float | None = None) -> Conditioning:
    """One entry: T5's tokens of `t5xxl` as the context, CLIP-L's pooled output of `clip_l`, and `guidance`
    when given (CLIPTextEncodeFlux; CLIPTextEncode leaves it to the model's default)."""
    from flowrun.diffusion.lora import patched

    if len(enc.models) != 2 or enc.models[0] is None or enc.models[1] is None:
        raise ValueError("input 'clip': a Flux CLIP holds CLIP-L and T5-XXL (DualCLIPLoader type flux)")
    with patched(enc.models, enc.patches):
        pooled = pooled_clip_l(enc, clip_l)
        context = context_t5(enc, t5xxl)
    extra = {} if guidance is None else {"guidance": float(guidance)}
    return Conditioning([CondEntry(context, pooled_output=pooled, extra=extra)])
