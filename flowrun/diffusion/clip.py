"""Prompt text to CONDITIONING, with ComfyUI's emphasis syntax and its handling of long prompts.

- `(word)` multiplies the weight by 1.1, `(word:1.3)` sets it, nesting multiplies; `\\(` and `\\)` are literal.
- Each whitespace-separated word is tokenized on its own and kept whole in a 77-token chunk (start + 75 +
  end) unless it is 8 tokens or longer; chunks are encoded separately and concatenated along the tokens.
- A weight w != 1 moves a token's embedding away from the empty prompt's: z' = (z - z_empty) * w + z_empty.
- Layers: SD1 reads the last layer, SD2 the penultimate, both through the final layer norm; SDXL reads the
  penultimate layer of CLIP-L and of OpenCLIP-bigG without it and concatenates them, its pooled vector
  from bigG's projection (the SDXL refiner: bigG alone). CLIPSetLastLayer picks another layer.
"""

from __future__ import annotations

from typing import Any

import torch

from flowrun.diffusion.configs import SD1, SDXL, SDXL_REFINER
from flowrun.diffusion.model import TextEncoder
from flowrun.values import CondEntry, Conditioning

START, END = 49406, 49407
CHUNK = 77
MAX_WORD_TOKENS = 8


def _parse_parentheses(text: str) -> list[str]:
    out, current, depth = [], "", 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    out.append(current)
                current = "("
            else:
                current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        out.append(current)
    return out


def token_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Split a prompt into (segment, weight) by ComfyUI's emphasis rules."""
    out: list[tuple[str, float]] = []
    for part in _parse_parentheses(text):
        w = weight
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            colon = inner.rfind(":")
            w *= 1.1
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += token_weights(inner, w)
        else:
            out.append((part, weight))
    return out


def _escape(text: str) -> str:
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def _unescape(text: str) -> str:
    return text.replace("\0\1", ")").replace("\0\2", "(")


def tokenize(tokenizer: Any, text: str, pad: int) -> list[list[tuple[int, float]]]:
    """Chunks of exactly 77 (token, weight) pairs."""
    words: list[list[tuple[int, float]]] = []
    for segment, weight in token_weights(_escape(text), 1.0):
        for word in _unescape(segment).replace("\n", " ").split(" "):
            if word:
                ids = tokenizer(word)["input_ids"][1:-1]
                words.append([(t, weight) for t in ids])
    chunks: list[list[tuple[int, float]]] = []
    chunk = [(START, 1.0)]
    for group in words:
        large = len(group) >= MAX_WORD_TOKENS
        while group:
            if len(group) + len(chunk) > CHUNK - 1:
                room = CHUNK - len(chunk) - 1
                if large:
                    chunk += group[:room]
                    group = group[room:]
                chunk.append((END, 1.0))
                chunk += [(pad, 1.0)] * (CHUNK - len(chunk))
                chunks.append(chunk)
                chunk = [(START, 1.0)]
            else:
                chunk += group
                group = []
    chunk.append((END, 1.0))
    chunk += [(pad, 1.0)] * (CHUNK - len(chunk))
    chunks.append(chunk)
    return chunks


def _layer_plan(enc: TextEncoder, index: int) -> tuple[int | None, bool]:
    """(hidden-state index or None for the normed last layer, whether to apply the final layer norm)."""
    family = enc.family
    if family in (SDXL, SDXL_REFINER):
        return (enc.layer_idx if enc.layer_idx is not None else -2), False
    if enc.layer_idx is not None:
        return enc.layer_idx, True
    return (None, True) if family == SD1 else (-2, True)


def _encode_one(enc: TextEncoder, index: int, chunks: list[list[tuple[int, float]]], pad: int):
    model = enc.models[index]
    weighted = any(w != 1.0 for c in chunks for _, w in c)
    ids = [[t for t, _ in c] for c in chunks]
    if weighted:
        ids.append([START, END] + [pad] * (CHUNK - 2))
    layer, norm = _layer_plan(enc, index)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), output_hidden_states=layer is not None)
    if layer is None:
        z = out.last_hidden_state
    else:
        n_layers = len(out.hidden_states) - 1
        if not -n_layers <= layer <= -1:
            raise ValueError(f"stop_at_clip_layer {layer} is beyond this text encoder's {n_layers} layers")
        z = out.hidden_states[layer]
        if norm:
            z = getattr(model, "text_model", model).final_layer_norm(z)
    pooled = out.text_embeds[0:1] if hasattr(out, "text_embeds") else None
    pieces = []
    for k, chunk in enumerate(chunks):
        zk = z[k:k + 1].clone()
        if weighted:
            empty = z[-1]
            for j, (_, w) in enumerate(chunk):
                if w != 1.0:
                    zk[0, j] = (zk[0, j] - empty[j]) * w + empty[j]
        pieces.append(zk)
    return torch.cat(pieces, dim=1), pooled


def encode(enc: TextEncoder, text: str) -> Conditioning:
    """CONDITIONING for one prompt: one entry, the embedding [1, 77*k, width] (and SDXL's pooled output)."""
    from flowrun.diffusion.lora import patched

    if enc.family == SDXL:
        return encode_sdxl(enc, text, text)
    with patched(enc.models, enc.patches):
        if enc.family == SDXL_REFINER:
            cond_g, pooled = _encode_one(enc, 0, tokenize(enc.tokenizer, text, 0), 0)
            return Conditioning([CondEntry(cond_g, pooled_output=pooled)])
        pad = END if enc.family == SD1 else 0
        cond, _ = _encode_one(enc, 0, tokenize(enc.tokenizer, text, pad), pad)
        return Conditioning([CondEntry(cond)])




def encode_sdxl(enc: TextEncoder, text_g: str, text_l: str, extra: dict | None = None) -> Conditioning:
    """SDXL's conditioning from a prompt for each encoder (CLIPTextEncodeSDXL): when one runs to more
    77-token chunks than the other, the shorter is padded with empty-prompt chunks, as ComfyUI does."""
    from flowrun.diffusion.lora import patched

    if enc.family != SDXL:
        raise ValueError(f"input 'clip': text_g and text_l are for SDXL's two text encoders; this CLIP is {enc.family}")
    chunks_l, chunks_g = tokenize(enc.tokenizer, text_l, END), tokenize(enc.tokenizer, text_g, 0)
    chunks_l += tokenize(enc.tokenizer, "", END) * (len(chunks_g) - len(chunks_l))
    chunks_g += tokenize(enc.tokenizer, "", 0) * (len(chunks_l) - len(chunks_g))
    with patched(enc.models, enc.patches):
        cond_l, _ = _encode_one(enc, 0, chunks_l, END)
        cond_g, pooled = _encode_one(enc, 1, chunks_g, 0)
    return Conditioning([CondEntry(torch.cat([cond_l, cond_g], dim=-1), pooled_output=pooled, extra=dict(extra or {}))])


def encode_refiner(enc: TextEncoder, text: str, extra: dict) -> Conditioning:
    """The SDXL refiner's conditioning with its size and aesthetic score (CLIPTextEncodeSDXLRefiner)."""
    if enc.family != SDXL_REFINER:
        raise ValueError(f"input 'clip': this node is for the SDXL refiner's text encoder; this CLIP is {enc.family}")
    return encode(enc, text).map(lambda e: e.replace(extra=dict(extra)))
