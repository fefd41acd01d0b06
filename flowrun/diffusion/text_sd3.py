"""SD3's prompt conditioning from its three text encoders, as ComfyUI's sd3_clip.SD3ClipModel gives it.

- CLIP-L (penultimate layer, no final norm, pooled: its final-normed end token) and CLIP-G (penultimate layer,
  no final norm, pooled: its projection) read 77-token chunks as for SDXL; their hidden states are joined along
  the width (CLIP-G alone: CLIP-L's part left zero) and zero-padded to T5's width (4096).
- T5-XXL reads the prompt unchunked, padded to 77 tokens (flowrun.diffusion.t5); its tokens follow the CLIP
  tokens: the context is [CLIP part; T5 part] along the tokens.
- The pooled vector is CLIP-L's and CLIP-G's side by side (zeros for one that is missing).
- Any encoder may be missing (ComfyUI's TripleCLIPLoader / CLIPLoader with fewer files): without T5 the context
  is the CLIP part alone; with no CLIP prompt and no T5, zeros of 77 tokens. A CLIP with no encoder at all (a
  checkpoint without them) is an error, as ComfyUI gives no CLIP then.
"""

from __future__ import annotations

import torch

from flowrun.diffusion import t5
from flowrun.diffusion.clip_tokens import END, tokenize
from flowrun.diffusion.clip_tower import _encode_one
from flowrun.diffusion.model import TextEncoder
from flowrun.diffusion.prompt_syntax import embedding_names
from flowrun.values import CondEntry, Conditioning

T5_MIN_LENGTH = 77
CONTEXT_WIDTH = 4096  # T5-XXL's width, what SD3's context embedder reads


def context_width(enc: TextEncoder) -> int:
    """The width the CLIP part is padded to: T5's where it is loaded, else the configuration's (4096)."""
    if enc.models[2] is not None:
        return int(enc.models[2].config.d_model)
    return int(enc.config.extra.get("context_width", CONTEXT_WIDTH))


def _widths(enc: TextEncoder) -> tuple[int, int, int]:
    """(CLIP-L hidden width, CLIP-L pooled width, CLIP-G pooled width), from the loaded models or the config."""
    l_cfg, g_cfg = enc.config.text_encoders[0], enc.config.text_encoders[1]
    l_model, g_model = enc.models[0], enc.models[1]
    l_width = int(l_model.config.hidden_size if l_model is not None else l_cfg["hidden_size"])
    g_pooled = int(g_model.config.projection_dim if g_model is not None else g_cfg["projection_dim"])
    return l_width, l_width, g_pooled


def encode_sd3(enc: TextEncoder, text_l: str, text_g: str, text_t5: str, empty_padding: bool = True) -> Conditioning:
    """SD3's conditioning from a prompt for each encoder (CLIPTextEncodeSD3; CLIPTextEncode gives the same text
    to all three). Without `empty_padding` ("none"), an empty prompt leaves its encoder out: empty CLIP prompts
    drop the CLIP part (unless the other CLIP's prompt is not empty), an empty T5 prompt encodes the end token
    alone."""
    from flowrun.diffusion.lora import patched

    names = embedding_names(" ".join((text_l, text_g, text_t5)))
    if names:  # not read as text either: that would silently give another image than ComfyUI's
        raise ValueError(f"textual-inversion embeddings are not supported for SD3 yet (the prompt names "
                         f"'embedding:{names[0]}')")
    if enc.layer_idx not in (None, -1) and enc.models[2] is not None:
        # ComfyUI's CLIPSetLastLayer reaches T5 too (an inner block's output); flowrun reads T5's last layer only
        raise ValueError(f"CLIPSetLastLayer {enc.layer_idx} on SD3 with T5 is not supported (only -1)")
    if all(m is None for m in enc.models):  # ComfyUI gives such a checkpoint no CLIP at all
        raise ValueError(f"input 'clip': {enc.config.source} holds none of SD3's text encoders (CLIP-L, CLIP-G, "
                         "T5-XXL); load them with TripleCLIPLoader")
    tok = enc.tokenizer
    chunks_l = [] if (not text_l and not empty_padding) else tokenize(tok, text_l, END)
    chunks_g = [] if (not text_g and not empty_padding) else tokenize(tok, text_g, 0)
    if len(chunks_l) != len(chunks_g):  # as ComfyUI: the shorter is padded with empty-prompt chunks
        chunks_l += tokenize(tok, "", END) * (len(chunks_g) - len(chunks_l))
        chunks_g += tokenize(tok, "", 0) * (len(chunks_l) - len(chunks_g))
    tokens_t5 = [(t5.END, 1.0)] if (not text_t5 and not empty_padding) else t5.tokenize(text_t5, T5_MIN_LENGTH)
    l_width, l_pooled_width, g_pooled_width = _widths(enc)
    width = context_width(enc)
    clip_l, clip_g, t5_model = enc.models
    lg, pooled, out = None, None, None
    with patched(enc.models, enc.patches):
        if chunks_l:
            l_pooled = torch.zeros(1, l_pooled_width)
            if clip_l is not None:
                lg, l_pooled = _encode_one(enc, 0, chunks_l, END)
            g_pooled = torch.zeros(1, g_pooled_width)
            if clip_g is not None:
                g_out, g_pooled = _encode_one(enc, 1, chunks_g, 0)
                lg = torch.cat([lg, g_out], dim=-1) if lg is not None else torch.nn.functional.pad(g_out, (l_width, 0))
            if lg is not None:
                if lg.shape[-1] > width:
                    raise ValueError(f"input 'clip': the CLIP part is {lg.shape[-1]} wide, wider than the context "
                                     f"({width}): text encoders of different models?")
                lg = torch.nn.functional.pad(lg, (0, width - lg.shape[-1]))
                out = lg
            pooled = torch.cat([l_pooled.float(), g_pooled.float()], dim=-1)
        if t5_model is not None:
            t5_out = t5.encode(t5_model, tokens_t5)
            out = torch.cat([lg.float(), t5_out], dim=-2) if lg is not None else t5_out
    if out is None:
        out = torch.zeros(1, 77, width)
    if pooled is None:
        pooled = torch.zeros(1, l_pooled_width + g_pooled_width)
    return Conditioning([CondEntry(out.float(), pooled_output=pooled.float())])
