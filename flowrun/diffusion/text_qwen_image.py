"""Qwen-Image's prompt conditioning from its one text encoder, the text model of Qwen2.5-VL 7B, as ComfyUI's
qwen_image text encoder gives it (comfy/text_encoders/qwen_image.py) and diffusers' QwenImagePipeline computes it.

- The prompt goes into the chat template ("Describe the image by detailing ...", the user turn, the assistant's
  start); a prompt that starts with `<|im_start|>` is taken as a whole template. The text is tokenized in one
  piece with the Qwen2.5 byte-level BPE shipped in qwen_tokenizer/ (weights are off: `(word:1.2)` stays text, as
  ComfyUI tokenizes it with disable_weights; only the backslash of `\\(` / `\\)` goes). No start, end or padding.
- The context is the last layer's output (after the final norm: the pipeline's hidden_states[-1], ComfyUI's
  "last"), without the template's system turn: it starts after the second `<|im_start|>` and the "user\\n" that
  follows it (ComfyUI's cut; 34 tokens, the pipeline's drop_idx, for the standard template).
- CLIPSetLastLayer -n reads the n-th layer from the end without the final norm (-1 too: ComfyUI's "hidden" layer
  of this encoder), a layer beyond the depth the default.
- The encoder is transformers' Qwen2_5_VLTextModel: for text alone its 3-axis rotary positions are one axis
  repeated, the plain 1-D rotary embedding ComfyUI's Llama-type model uses. The vision tower of the file is not
  read (images are Qwen-Image-Edit's, not supported here).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion import offline  # noqa: F401  (sets the hub libraries offline before they load)
from flowrun.values import CondEntry, Conditioning

TOKENIZER = Path(__file__).resolve().parent / "qwen_tokenizer"
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
IM_START, USER, NEWLINE = 151644, 872, 198
_LAYERS = "layers."
_MARKERS = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.bias", "norm.weight")


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The Qwen2.5 tokenizer from the files shipped in the package (adds no special tokens of its own)."""
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast.from_pretrained(str(TOKENIZER))


def tokenize(text: str) -> list[int]:
    """The token ids of a prompt in Qwen-Image's template (or of the prompt itself when it is a template)."""
    text = text.replace("\\(", "(").replace("\\)", ")")
    if not text.startswith("<|im_start|>"):
        text = TEMPLATE.format(text)
    return list(tokenizer()(text)["input_ids"])


def template_end(ids: list[int]) -> int:
    """Where the context starts (ComfyUI's cut): at the second `<|im_start|>` (or the first, or 0), moved past
    "user\\n" when that follows it and tokens remain after."""
    starts = [i for i, t in enumerate(ids) if t == IM_START][:2]
    end = starts[-1] if starts else 0
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end


def is_qwen25(state: dict[str, Any]) -> bool:
    """Whether a state dict (text model's keys, prefix stripped) holds a Qwen2-type decoder: q/k/v biases, no
    q/k norms (Qwen3's, as Z-Image reads, have the norms and no biases)."""
    return all(k in state for k in _MARKERS) and "layers.0.self_attn.q_norm.weight" not in state


def config_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """Qwen2_5_VLTextConfig fields read off the shapes (vocabulary, widths, depth, heads; head width 128 as every
    Qwen2.5 model of this size family)."""
    from flowrun.diffusion.configs import QWEN25_VL_7B_TEXT

    vocab, hidden = state["embed_tokens.weight"].shape
    layers = 1 + max(int(k[len(_LAYERS):].split(".")[0]) for k in state if k.startswith(_LAYERS))
    q_out = state["layers.0.self_attn.q_proj.weight"].shape[0]
    kv_out = state["layers.0.self_attn.k_proj.weight"].shape[0]
    head = QWEN25_VL_7B_TEXT["hidden_size"] // QWEN25_VL_7B_TEXT["num_attention_heads"]
    return {**QWEN25_VL_7B_TEXT, "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0],
            "num_attention_heads": q_out // head, "num_key_value_heads": kv_out // head}


def build(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32):
    """Qwen2_5_VLTextModel with `state`'s weights, built on the meta device and given the tensors (a full-size meta
    state only counts parameters); `config` (a sidecar's) wins over the shapes. ValueError when they do not fit."""
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    config = Qwen2_5_VLTextConfig(**(config or config_from_state(state)))
    with torch.device("meta"):
        model = Qwen2_5_VLTextModel(config)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"Qwen2.5-VL text weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if not any(t.is_meta for t in model.buffers()):
        return model.eval().requires_grad_(False)
    # the rotary table is a buffer the meta device left empty: compute it for real (nothing else is a buffer)
    rotary = type(model.rotary_emb)(config=config)
    model.rotary_emb = rotary
    return model.eval().requires_grad_(False)


def encode(model, ids: list[int], layer_idx: int | None = None) -> torch.Tensor:
    """The context [1, n, hidden] in float32 of a tokenized prompt, from the template's end on: the last layer's
    output after the final norm, or (`layer_idx`, as CLIPSetLastLayer sets it) that layer's output without the
    norm, as ComfyUI's "hidden" layer of this encoder (a layer beyond the depth: the last, normed)."""
    layers = model.config.num_hidden_layers
    inner = layer_idx is not None and abs(layer_idx) <= layers
    captured: list[torch.Tensor] = []
    if inner:  # the layer's own output: a hook, as transformers' hidden_states are counted differently by version
        layer = model.layers[layer_idx % layers]
        hook = layer.register_forward_hook(lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            z = model(input_ids=torch.tensor([ids], device=model.embed_tokens.weight.device)).last_hidden_state
    finally:
        if inner:
            hook.remove()
    if inner:
        z = captured[0]
    return z[:, template_end(ids):].float().cpu()


def encode_qwen_image(enc, text: str) -> Conditioning:
    """Qwen-Image's conditioning for one prompt (CLIPTextEncode with a Qwen-Image CLIP): the Qwen2.5-VL context."""
    from flowrun.diffusion.lora import patched

    model, = enc.models
    with patched(enc.models, enc.patches):
        context = encode(model, tokenize(text), enc.layer_idx)
    return Conditioning([CondEntry(context)])
