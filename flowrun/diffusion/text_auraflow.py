"""AuraFlow's prompt conditioning from its one text encoder, EleutherAI's Pile-T5 XL, as ComfyUI's aura_t5 gives it.

- The tokenizer is Pile-T5's SentencePiece model, shipped in auraflow_tokenizer/ (with its NOTICE) and read
  with sentencepiece as ComfyUI's SPieceTokenizer reads it. transformers 5 builds no working tokenizer from a
  bare SentencePiece model (its LlamaTokenizer gives the end token alone), hence sentencepiece itself.
- Each whitespace word is tokenized on its own with its weight (ComfyUI's `(word:1.2)`), no start token, the end
  token 2 closes the prompt, which is padded with 1 to at least 256 tokens and never cut.
- The encoder is a UMT5 (a relative position table in every layer: transformers' UMT5EncoderModel). It reads
  the tokens up to and including the end token (an attention mask), and the context is its last hidden state
  with the padding's positions set to zero (ComfyUI's enable_attention_masks and zero_out_masked).
- A weight w != 1 moves a token's vector away from the empty prompt's, z' = (z - z_empty) * w + z_empty.
- A CLIP without the encoder (a checkpoint without it) is an error at the prompt, as ComfyUI gives no CLIP then.
- CLIPSetLastLayer -n reads the n-th layer from the end through the final layer norm, as ComfyUI's T5 does
  (final_layer_norm_intermediate); a layer beyond the encoder's depth means the last, as ComfyUI's clip_layer.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.prompt_syntax import prompt_words
from flowrun.values import CondEntry, Conditioning

TOKENIZER = Path(__file__).resolve().parent / "auraflow_tokenizer" / "tokenizer.model"
END, PAD = 2, 1
MIN_LENGTH = 256
_BLOCK = "encoder.block."
# a UMT5 has a relative position table in every layer; T5 v1.1 (SD3's, Flux's) only in the first
_UMT5_MARK = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.block.0.layer.0.SelfAttention."
            "relative_attention_bias.weight")


@functools.lru_cache(maxsize=1)
def tokenizer():
    """Pile-T5's SentencePiece processor from the model shipped in the package (no start or end token added)."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER), add_bos=False, add_eos=False)


def tokenize(text: str, min_length: int = MIN_LENGTH) -> list[tuple[int, float]]:
    """(token id, weight) pairs of a prompt: each word's pieces with its weight, the end token, then padding to
    at least `min_length` pairs."""
    sp = tokenizer()
    tokens: list[tuple[int, float]] = []
    for word, weight in prompt_words(text):
        tokens += [(t, weight) for t in sp.encode(word)]
    tokens.append((END, 1.0))
    tokens += [(PAD, 1.0)] * (min_length - len(tokens))
    return tokens


def is_pile_t5(state: dict[str, Any]) -> bool:
    """Whether a state dict (transformers' layout, prefix stripped) holds a UMT5 encoder such as Pile-T5 XL."""
    return all(k in state for k in _MARKERS) and _UMT5_MARK in state


def config_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """UMT5Config fields read off a Pile-T5 state dict's shapes (width, depth, heads, feed-forward)."""
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    vocab, d_model = shared.shape
    layers = 1 + max(int(k[len(_BLOCK):].split(".")[0]) for k in state if k.startswith(_BLOCK))
    buckets, heads = state[_MARKERS[1]].shape
    inner = state[_MARKERS[0]].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    wi = state["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    return {
        "vocab_size": vocab, "d_model": d_model, "d_kv": inner // heads, "d_ff": wi.shape[0], "num_layers": layers,
        "num_heads": heads, "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu" if gated else "relu", "layer_norm_epsilon": 1e-6,
        "pad_token_id": PAD, "eos_token_id": END,
    }


def build(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    """UMT5EncoderModel with `state`'s weights, built on the meta device and given the tensors (no second copy;
    a full-size meta state only counts parameters)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**config_from_state(state), is_encoder_decoder=False, use_cache=False)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    shared = state.pop("shared.weight", None)
    shared = state.pop("encoder.embed_tokens.weight", None) if shared is None else shared
    state.pop("encoder.embed_tokens.weight", None)
    state["shared.weight"] = shared
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise ValueError(f"Pile-T5 weights do not fit a UMT5 encoder: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.encoder.embed_tokens = model.shared  # the tied table: one tensor, as in the file
    return model.eval().requires_grad_(False)


def _run(model, ids: list[list[int]], layer_idx: int | None = None) -> torch.Tensor:
    """Hidden states [n, len, d] in float32 (the last, or layer `layer_idx` through the final norm), the
    positions after each row's end token masked and zeroed."""
    mask = torch.zeros(len(ids), len(ids[0]), dtype=torch.long)
    for row, tokens in enumerate(ids):
        mask[row, :tokens.index(END) + 1] = 1
    last = layer_idx is None or layer_idx == -1 or abs(layer_idx) > model.config.num_layers
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=mask, output_hidden_states=not last)
        z = out.last_hidden_state if last else model.encoder.final_layer_norm(out.hidden_states[layer_idx])
    return z.float() * mask.unsqueeze(-1)


def encode(model, tokens: list[tuple[int, float]], layer_idx: int | None = None) -> torch.Tensor:
    """The context [1, len(tokens), d_model] of a tokenized prompt, the weights applied against the empty prompt;
    `layer_idx` as CLIPSetLastLayer sets it (None: the last layer)."""
    ids = [[t for t, _ in tokens]]
    weighted = any(w != 1.0 for _, w in tokens)
    if weighted:
        ids.append([END] + [PAD] * (len(tokens) - 1))
    z = _run(model, ids, layer_idx)
    out = z[0:1].clone()
    if weighted:
        for j, (_, w) in enumerate(tokens):
            if w != 1.0:
                out[0, j] = (out[0, j] - z[1, j]) * w + z[1, j]
    return out


def encode_auraflow(enc, text: str) -> Conditioning:
    """AuraFlow's conditioning for one prompt (CLIPTextEncode with an AuraFlow CLIP): the Pile-T5 context alone."""
    from flowrun.diffusion.lora import patched

    model, = enc.models
    if model is None:  # ComfyUI gives such a checkpoint no CLIP at all
        raise ValueError(f"input 'clip': {enc.config.source} holds no Pile-T5 text encoder; load AuraFlow's with "
                         "CLIPLoader")
    with patched(enc.models, enc.patches):
        context = encode(model, tokenize(text), enc.layer_idx)
    return Conditioning([CondEntry(context)])
