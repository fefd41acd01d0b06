"""The T5 v1.1 text encoder (Raffel et al. 2020) that SD3, Flux and their kin read prompts with: the tokenizer
shipped in the package, the encoder on transformers' T5EncoderModel, and ComfyUI's prompt handling for it.

- The prompt's weights are ComfyUI's (`(word:1.3)`; flowrun.diffusion.prompt_syntax); each whitespace word is
  tokenized on its own, as ComfyUI's tokenizer does for every text encoder.
- No start token; the end token (1) closes the prompt, which is padded with 0 to `min_length` (77 for SD3, 256
  for Flux) and never cut or chunked: T5's relative positions have no 77-token limit.
- A weight w != 1 moves a token's vector away from the empty prompt's, z' = (z - z_empty) * w + z_empty, with the
  empty prompt (end token, then padding) of the same length, as for CLIP.

A T5 file is recognised, and its whole configuration read, from its weights' names and shapes: the width from
the shared embedding, the depth from the blocks, heads from the relative attention bias. ComfyUI's t5xxl files
are in transformers' layout (`encoder.block.N...`, `shared.weight`), which T5EncoderModel loads as it is.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.diffusion.prompt_syntax import prompt_words

TOKENIZER_DIR = Path(__file__).resolve().parent / "t5_tokenizer"
END, PAD = 1, 0
_BLOCK = "encoder.block."
_REL_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
# what a file holds when it is a T5 encoder, whatever else it may carry
_MARKERS = ("encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight")


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The T5 v1.1 tokenizer from the files shipped in the package (t5_tokenizer/, with its NOTICE)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"), legacy=False)


def tokenize(text: str, min_length: int) -> list[tuple[int, float]]:
    """(token id, weight) pairs of a prompt: each word's pieces with its weight, the end token, then padding to
    at least `min_length` pairs."""
    tok = tokenizer()
    tokens: list[tuple[int, float]] = []
    for word, weight in prompt_words(text):
        tokens += [(t, weight) for t in tok(word)["input_ids"][:-1]]  # the last id is the word's end token
    tokens.append((END, 1.0))
    tokens += [(PAD, 1.0)] * (min_length - len(tokens))
    return tokens


def is_t5(state: dict[str, Any]) -> bool:
    """Whether a state dict (keys in transformers' layout) holds a T5 encoder."""
    return all(k in state for k in _MARKERS) or (_MARKERS[0] in state and "encoder.embed_tokens.weight" in state)


def config_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """A T5 v1.1 configuration (transformers' T5Config fields) read off a state dict's shapes."""
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    vocab, d_model = shared.shape
    layers = 1 + max(int(k[len(_BLOCK):].split(".")[0]) for k in state if k.startswith(_BLOCK))
    heads = state[_REL_BIAS].shape[1]
    inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    wi = state["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    return {
        "vocab_size": vocab, "d_model": d_model, "d_kv": inner // heads, "d_ff": wi.shape[0], "num_layers": layers,
        "num_heads": heads, "relative_attention_num_buckets": state[_REL_BIAS].shape[0],
        "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu" if gated else "relu",
        "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "use_cache": False,
        "pad_token_id": PAD, "eos_token_id": END, "decoder_start_token_id": PAD,
    }


def build(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, device: str = "meta"):
    """T5EncoderModel with `state`'s weights, built on the meta device and given the tensors (no second copy
    of the weights is allocated); `device="meta"` with an empty-tensor state only counts parameters."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**config_from_state(state))
    with torch.device("meta"):
        model = T5EncoderModel(config)
    state = dict(state)
    shared = state.pop("shared.weight", None)
    if shared is None:
        shared = state["encoder.embed_tokens.weight"]
    state.pop("encoder.embed_tokens.weight", None)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state["shared.weight"] = shared.to(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "encoder.embed_tokens.weight"]
    if missing or unexpected:
        raise ValueError(f"T5 weights do not fit a T5 encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.encoder.embed_tokens = model.shared  # the tied table: one tensor, as in the file
    return model.eval().requires_grad_(False)


def encode(model, tokens: list[tuple[int, float]], device: str = "cpu") -> torch.Tensor:
    """The last hidden state (after the final layer norm) [1, len(tokens), d_model] in float32, with the
    tokens' weights applied against the empty prompt of the same length."""
    ids = [[t for t, _ in tokens]]
    weighted = any(w != 1.0 for _, w in tokens)
    if weighted:
        ids.append([END] + [PAD] * (len(tokens) - 1))
    with torch.no_grad():
        z = model(input_ids=torch.tensor(ids, device=device)).last_hidden_state.float()
    out = z[0:1].clone()
    if weighted:
        for j, (_, w) in enumerate(tokens):
            if w != 1.0:
                out[0, j] = (out[0, j] - z[1, j]) * w + z[1, j]
    return out
