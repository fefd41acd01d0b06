"""Z-Image's prompt conditioning from its one text encoder, Qwen3 4B, as ComfyUI's z_image text encoder gives it
(CLIPLoader type lumina2) and diffusers' ZImagePipeline computes it.

- The prompt goes into Qwen3's chat template as a user turn followed by the assistant's header,
  "<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n", tokenized as one string with the Qwen2.5
  byte-level BPE shipped in qwen_tokenizer/ (Qwen3 has the same vocabulary, merges and ids for these special
  tokens). diffusers renders the template with enable_thinking=True, which adds no <think> block, so both read
  the same ids; no start or end token, no padding, no weights (ComfyUI: disable_weights).
- The context is the hidden state after the second-to-last layer (ComfyUI's layer_idx -2, diffusers'
  hidden_states[-2]), without the final norm, all tokens (none is padding).
- CLIPSetLastLayer -n reads the output of the n-th layer from the end, without the final norm; a layer beyond
  the depth means the final normed output, as ComfyUI's clip_layer.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.values import CondEntry, Conditioning

TOKENIZER = Path(__file__).resolve().parent / "qwen_tokenizer"
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_LAYER = -2
_MARKERS = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.gate_proj.weight")
_QK_NORM = "layers.0.self_attn.q_norm.weight"  # Qwen3 normalizes queries and keys; Qwen2 / 2.5 do not


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The Qwen2.5 / Qwen3 byte-level BPE tokenizer shipped in the package."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(str(TOKENIZER))


def tokenize(text: str) -> list[int]:
    """Token ids of a prompt in Z-Image's chat template."""
    return tokenizer()(TEMPLATE.format(text), add_special_tokens=False).input_ids


def is_qwen_llm(state: dict[str, Any]) -> bool:
    """Whether a state dict (prefix stripped) holds a Qwen-type decoder (embed_tokens, q_proj, gated MLP)."""
    return all(k in state for k in _MARKERS)


def is_qwen3(state: dict[str, Any]) -> bool:
    """Whether a state dict (transformers' Qwen3Model layout, prefix stripped) holds a Qwen3 decoder."""
    return is_qwen_llm(state) and _QK_NORM in state


def config_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """Qwen3Config fields read off a Qwen3 state dict's shapes; theta, eps and context length are Qwen3's."""
    vocab, hidden = state["embed_tokens.weight"].shape
    head_dim = state[_QK_NORM].shape[0]
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
    return {
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "head_dim": head_dim,
        "num_attention_heads": state["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
        "num_key_value_heads": state["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0], "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "tie_word_embeddings": True,
    }


def build(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    """transformers' Qwen3Model with `state`'s weights, built on the meta device and given the tensors (no second
    copy; a full-size meta state only counts parameters)."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(**config_from_state(state))
    with torch.device("meta"):
        model = Qwen3Model(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Qwen3 weights do not fit a Qwen3 decoder: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    if state["embed_tokens.weight"].device.type != "meta":  # the rotary table is a buffer, not in the file
        model.rotary_emb = type(model.rotary_emb)(config=config)
    return model.eval().requires_grad_(False)


def encode(model, ids: list[int], layer_idx: int | None = None) -> torch.Tensor:
    """The context [1, len(ids), hidden] in float32: the output of layer `layer_idx` (negative, from the end;
    None: -2) without the final norm, or the normed last state when it lies beyond the depth."""
    layer_idx = DEFAULT_LAYER if layer_idx is None else layer_idx
    depth = len(model.layers)
    captured: list[torch.Tensor] = []
    hook = None
    if abs(layer_idx) <= depth:  # a forward hook: transformers' hidden_states[-1] is after the final norm
        index = layer_idx % depth
        hook = model.layers[index].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    finally:
        if hook is not None:
            hook.remove()
    return (captured[0] if captured else out.last_hidden_state).float()


def encode_zimage(enc, text: str) -> Conditioning:
    """Z-Image's conditioning for one prompt (CLIPTextEncode with a Z-Image CLIP): the Qwen3 context alone."""
    from flowrun.diffusion.lora import patched

    model, = enc.models
    with patched(enc.models, enc.patches):
        context = encode(model, tokenize(text), enc.layer_idx)
    return Conditioning([CondEntry(context)])
