"""Style models: tokens made from a CLIP vision output and appended to a prompt's text embedding.

The T2I style adapter (TencentARC's t2iadapter_style / coadapter-style, ComfyUI's StyleAdapter): the image's
last hidden state [b, 1 + patches, w] followed by learned style tokens, a pre-norm, a few residual attention
blocks (OpenAI CLIP's, QuickGELU), a post-norm over the style tokens and a projection to the text
embedding's width. Its sizes are read off the weights; its 8 heads are ComfyUI's. diffusers has no style
adapter, so the module is written here with torch's own attention (its weight names match the files).
Flux's Redux is a style model too: SigLIP's last hidden state [b, 729, 1152] through two linear layers
(silu between) to 729 tokens of T5's width, appended to the prompt's (diffusers' ReduxImageEncoder, whose
weight names are the file's).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowrun.diffusion.detect import CheckpointError

HEADS = 8  # what ComfyUI builds the style adapter with; heads cannot be read off the weights


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """OpenAI CLIP's residual attention block (sequence first)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """TencentARC's style adapter: CLIP vision hidden states -> `tokens` context tokens."""

    def __init__(self, width: int, context_dim: int, layers: int, tokens: int, heads: int = HEADS):
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])  # sic: the files' name
        self.num_token = tokens
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_post = nn.LayerNorm(width)
        self.ln_pre = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.expand(hidden.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([hidden, style], dim=1)).permute(1, 0, 2)
        x = self.transformer_layes(x).permute(1, 0, 2)
        return self.ln_post(x[:, -self.num_token:, :]) @ self.proj


@dataclass
class StyleModel:
    """A STYLE_MODEL value."""

    model: Any
    fingerprint: str

    def tokens(self, clip_vision_output: Any) -> torch.Tensor:
        """The style tokens [b, tokens, context width] of a CLIP vision output (from its last hidden state)."""
        hidden = torch.as_tensor(clip_vision_output.last_hidden_state).float()
        redux = hasattr(self.model, "redux_up")
        width = self.model.redux_up.in_features if redux else self.model.style_embedding.shape[-1]
        if hidden.shape[-1] != width:
            goes_with = "SigLIP so400m: width 1152" if redux else "CLIP ViT-L/14: width 1024"
            raise ValueError(f"input 'clip_vision_output': hidden states of width {hidden.shape[-1]}, this style "
                             f"model reads {width} (it goes with {goes_with})")
        with torch.no_grad():
            return self.model(hidden).image_embeds if redux else self.model(hidden)


def _redux(state: dict[str, torch.Tensor], path: Path, fingerprint: str) -> StyleModel:
    """Flux Redux (flux1-redux-dev.safetensors): diffusers' ReduxImageEncoder, its widths read off the weights."""
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    from flowrun.diffusion.checkpoint import _instantiate

    up, down = state.get("redux_up.weight"), state["redux_down.weight"]
    if up is None or up.shape[0] != 3 * down.shape[0]:
        raise CheckpointError(f"{path}: Redux weights do not fit together (redux_up, redux_down)")
    model = _instantiate(lambda: ReduxImageEncoder(redux_dim=int(up.shape[1]), txt_in_features=int(down.shape[0])),
                         state, "Redux", path)
    return StyleModel(model, fingerprint)


def load(path: Path, fingerprint: str, *, allow_pickle: bool = False) -> StyleModel:
    """A style model file (the T2I style adapter, or Flux's Redux), its sizes read off the weights."""
    from flowrun.diffusion.checkpoint import read_state_dict

    state = read_state_dict(path, allow_pickle)
    if "redux_down.weight" in state:
        return _redux(state, path, fingerprint)
    if "style_embedding" not in state or "proj" not in state:
        raise CheckpointError(f"{path}: not a style model flowrun knows: expected the T2I style adapter's "
                              "'style_embedding' and 'proj' weights")
    _, tokens, width = state["style_embedding"].shape
    context_dim = state["proj"].shape[1]
    layers = len({k.split(".")[1] for k in state if k.startswith("transformer_layes.")})
    if width % HEADS:
        raise CheckpointError(f"{path}: a style adapter of width {width}, which its {HEADS} heads do not divide")
    model = StyleAdapter(width, context_dim, layers, tokens)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a weight of another shape than the sizes read off the others
        raise CheckpointError(f"{path}: style adapter weights do not fit together: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: style adapter weights do not match its sizes: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return StyleModel(model.float().eval().requires_grad_(False), fingerprint)
