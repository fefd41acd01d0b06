"""Prompt text to CONDITIONING, with ComfyUI's emphasis syntax and its handling of long prompts.

- `(word)` multiplies the weight by 1.1, `(word:1.3)` sets it, nesting multiplies; `\\(` and `\\)` are literal.
- Each whitespace-separated word is tokenized on its own and kept whole in a 77-token chunk (start + 75 +
  end) unless it is 8 tokens or longer; chunks are encoded separately and concatenated along the tokens.
- A weight w != 1 moves a token's embedding away from the empty prompt's: z' = (z - z_empty) * w + z_empty.
- Layers: SD1 reads the last layer, SD2 the penultimate, both through the final layer norm; SDXL reads the
  penultimate layer of CLIP-L and of OpenCLIP-bigG without it and concatenates them, its pooled vector
  from bigG's projection (the SDXL refiner: bigG alone). SD3 reads CLIP-L and CLIP-G as SDXL does, with T5
  (flowrun.diffusion.text_sd3); Flux takes T5's tokens and CLIP-L's pooled vector (flowrun.diffusion.text_flux).
  CLIPSetLastLayer picks another layer.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.clip_tokens import CHUNK, END, MAX_WORD_TOKENS, START, tokenize  # noqa: F401
from flowrun.diffusion.clip_tower import _encode_one, _Injected, _layer_plan, _split_ids  # noqa: F401
from flowrun.diffusion.configs import AURAFLOW, FLUX, QWEN_IMAGE, SD1, SD2, SD3, SDXL, SDXL_REFINER, ZIMAGE
from flowrun.diffusion.model import TextEncoder
from flowrun.diffusion.prompt_syntax import EMBEDDING, embedding_name, prompt_words, token_weights  # noqa: F401
from flowrun.values import CondEntry, Conditioning


def encode(enc: TextEncoder, text: str, embeddings=None, warn=None) -> Conditioning:
    """CONDITIONING for one prompt: one entry, the embedding [1, 77*k, width] (and SDXL's pooled output).
    `embeddings(name)` gives the state dict of a textual-inversion embedding the prompt names. An
    embedding that fits only one of SDXL's two encoders is left out of the other, with a warning, as
    ComfyUI does; one that fits none is an error."""
    from flowrun.diffusion.lora import patched

    if enc.family == FLUX:  # T5 context and CLIP-L pooled output (textual-inversion words stay text)
        from flowrun.diffusion import text_flux

        return text_flux.encode(enc, text, text)
    if enc.family == SDXL:
        return encode_sdxl(enc, text, text, embeddings=embeddings, warn=warn)
    if enc.family == SD3:
        from flowrun.diffusion.text_sd3 import encode_sd3

        return encode_sd3(enc, text, text, text, empty_padding=True)
    if enc.family == AURAFLOW:
        from flowrun.diffusion.text_auraflow import encode_auraflow

        return encode_auraflow(enc, text)
    if enc.family == QWEN_IMAGE:
        from flowrun.diffusion.text_qwen_image import encode_qwen_image

        return encode_qwen_image(enc, text)
    if enc.family == ZIMAGE:
        from flowrun.diffusion.text_zimage import encode_zimage

        return encode_zimage(enc, text)
    vectors, report = _embedding_lookups(enc, embeddings)
    with patched(enc.models, enc.patches):
        if enc.family == SDXL_REFINER:
            cond_g, pooled = _encode_one(enc, 0, tokenize(enc.tokenizer, text, 0, vectors(0)), 0)
            entry = CondEntry(cond_g, pooled_output=pooled)
        else:
            pad = END if enc.family == SD1 else 0
            cond, _ = _encode_one(enc, 0, tokenize(enc.tokenizer, text, pad, vectors(0)), pad)
            entry = CondEntry(cond)
    report(warn)
    return Conditioning([entry])


def _embedding_lookups(enc: TextEncoder, embeddings):
    """(vectors(index) -> the lookup `tokenize` takes for text encoder `index`, report(warn)). An
    embedding that fits only some of a model's text encoders is left out of the others (reported);
    one that fits none is an error."""
    keys = _EMBED_KEYS.get(enc.family, ("clip_l",) * len(enc.models))
    missed: dict[str, int] = {}

    def vectors(index: int):
        if embeddings is None:
            return None
        width = enc.models[index].config.hidden_size

        def lookup(name: str):
            try:
                return embedding_vectors(embeddings(name), name, keys[index], width)
            except ValueError:
                missed[name] = missed.get(name, 0) + 1
                if len(enc.models) == 1 or missed[name] == len(enc.models):
                    raise
                return None
        return lookup

    def report(warn) -> None:
        for name in missed:
            if warn is not None:
                warn(f"embedding '{name}' does not fit one of the text encoders; that one leaves it out")

    return vectors, report


def read_embedding(path, allow_pickle: bool) -> dict:
    """The contents of a textual-inversion file: safetensors, or (only with allow_pickle) an A1111 .pt /
    .bin read with torch.load(weights_only=True), nested dicts kept."""
    from flowrun.diffusion.checkpoint import read_state_dict
    from flowrun.diffusion.pickles import read_pickle
    from flowrun.files import PICKLE_SUFFIXES

    if path.suffix not in PICKLE_SUFFIXES:
        return read_state_dict(path, allow_pickle=False)
    data = read_pickle(path, allow_pickle, "embeddings")
    return data if isinstance(data, dict) else {"vectors": data}


# which entry of an embedding file feeds which text encoder (SDXL files hold one for each)
_EMBED_KEYS = {SD1: ("clip_l",), SD2: ("clip_h",), SDXL: ("clip_l", "clip_g"), SDXL_REFINER: ("clip_g",)}


def embedding_vectors(state: dict, name: str, key: str, width: int) -> torch.Tensor:
    """The vectors [n, width] of an embedding file's contents for the text encoder that `key` names, in
    the layouts ComfyUI reads: A1111's `string_to_param`, SDXL's `clip_l`/`clip_g`, or one tensor
    (`emb_params`). Raises ValueError when it is made for another width (another model family)."""
    if "string_to_param" in state:
        vectors = next(iter(state["string_to_param"].values()))
    elif key in state:
        vectors = state[key]
    else:
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ValueError(f"embedding '{name}' holds no vectors")
        vectors = tensors[0]
    vectors = vectors.float()
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.shape[-1] != width:
        raise ValueError(f"embedding '{name}' has vectors of width {vectors.shape[-1]}, but this text encoder "
                         f"takes {width}: it was made for another model family")
    return vectors.reshape(-1, width)




def encode_sdxl(enc: TextEncoder, text_g: str, text_l: str, extra: dict | None = None, embeddings=None,
                warn=None) -> Conditioning:
    """SDXL's conditioning from a prompt for each encoder (CLIPTextEncodeSDXL): when one runs to more
    77-token chunks than the other, the shorter is padded with empty-prompt chunks, as ComfyUI does."""
    from flowrun.diffusion.lora import patched

    if enc.family != SDXL:
        raise ValueError(f"input 'clip': text_g and text_l are for SDXL's two text encoders; this CLIP is {enc.family}")
    vectors, report = _embedding_lookups(enc, embeddings)
    chunks_l = tokenize(enc.tokenizer, text_l, END, vectors(0))
    chunks_g = tokenize(enc.tokenizer, text_g, 0, vectors(1))
    chunks_l += tokenize(enc.tokenizer, "", END) * (len(chunks_g) - len(chunks_l))
    chunks_g += tokenize(enc.tokenizer, "", 0) * (len(chunks_l) - len(chunks_g))
    with patched(enc.models, enc.patches):
        cond_l, _ = _encode_one(enc, 0, chunks_l, END)
        cond_g, pooled = _encode_one(enc, 1, chunks_g, 0)
    report(warn)
    return Conditioning([CondEntry(torch.cat([cond_l, cond_g], dim=-1), pooled_output=pooled, extra=dict(extra or {}))])


def encode_refiner(enc: TextEncoder, text: str, extra: dict, embeddings=None, warn=None) -> Conditioning:
    """The SDXL refiner's conditioning with its size and aesthetic score (CLIPTextEncodeSDXLRefiner)."""
    if enc.family != SDXL_REFINER:
        raise ValueError(f"input 'clip': this node is for the SDXL refiner's text encoder; this CLIP is {enc.family}")
    return encode(enc, text, embeddings, warn).map(lambda e: e.replace(extra=dict(extra)))
