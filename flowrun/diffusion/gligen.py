"""GLIGEN (Li et al. 2023): text boxes that place things, through gated self-attention layers ("fusers")
added after the self-attention of every transformer block of an SD1 UNet, fed by a position net that
embeds each box's corners with its phrase's pooled text embedding; as ComfyUI's gligen.py applies them.

Built on diffusers' own GLIGEN classes (GatedSelfAttentionDense, GLIGENTextBoundingboxProjection); the
patch that lends them to the UNet for a pass is flowrun/diffusion/gligen_patch.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.gligen_patch import Gligen

_SECTIONS = ("input_blocks", "middle_block", "output_blocks")


def _heads(query_dim: int, key_dim: int) -> tuple[int, int]:
    """(heads, head width) of a fuser, ComfyUI's rule: SD1's 768-wide GLIGEN has 8 heads, others 64-wide heads.
    (Neither can be read off the weights.) Toy widths below 64 keep 8 heads."""
    if key_dim == 768 or query_dim < 64:
        return 8, query_dim // 8
    return query_dim // 64, 64


def load(path: Path, fingerprint: str, *, allow_pickle: bool = False) -> Gligen:
    """A GLIGEN file (the fusers under input_blocks/middle_block/output_blocks.N...fuser.*, and position_net.*)."""
    from diffusers.models.attention import GatedSelfAttentionDense
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    from flowrun.diffusion.checkpoint import read_state_dict

    state = read_state_dict(path, allow_pickle)
    groups: dict[tuple[int, int, str], dict] = {}
    for key, value in state.items():
        if ".fuser." not in key:
            continue
        head, rest = key.split(".fuser.", 1)
        parts = head.split(".")
        section = next((s for s in _SECTIONS if s in parts), None)
        if section is None:
            raise CheckpointError(f"{path}: a fuser weight outside the UNet's blocks: {key!r}")
        at = parts.index(section)
        number = int(parts[at + 1]) if section != "middle_block" else 0
        groups.setdefault((_SECTIONS.index(section), number, head), {})[rest] = value
    if not groups or "position_net.null_positive_feature" not in state:
        raise CheckpointError(f"{path}: not a GLIGEN model: expected '*.fuser.*' and 'position_net.*' weights")
    fusers = []
    for _, weights in sorted(groups.items()):
        query_dim, key_dim = weights["linear.weight"].shape
        heads, width = _heads(query_dim, key_dim)
        fuser = GatedSelfAttentionDense(query_dim, key_dim, heads, width)
        _load(fuser, weights, path, "fuser")
        fusers.append(fuser.float().eval().requires_grad_(False))
    position = {k[len("position_net."):]: v for k, v in state.items() if k.startswith("position_net.")}
    net = GLIGENTextBoundingboxProjection(positive_len=position["null_positive_feature"].shape[0],
                                          out_dim=position["linears.4.weight"].shape[0], feature_type="text-only")
    _load(net, position, path, "position net")
    return Gligen(fusers, net.float().eval().requires_grad_(False), int(position["null_positive_feature"].shape[0]),
                  fingerprint)


def _load(module: torch.nn.Module, weights: dict, path: Path, what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: GLIGEN {what} weights do not fit: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: GLIGEN {what} weights: missing {missing[:3]}, unexpected {unexpected[:3]}")


def pooled_unprojected(enc: Any, text: str) -> torch.Tensor:
    """A phrase's pooled text embedding [1, width] before any projection (the final norm of its end token,
    first 77-token chunk), as ComfyUI's encode_from_tokens(return_pooled="unprojected")."""
    from flowrun.diffusion.clip import END, tokenize
    from flowrun.diffusion.lora import patched

    ids = [[int(t) for t, _ in tokenize(enc.tokenizer, text, END)[0]]]
    with patched(enc.models, enc.patches), torch.no_grad():
        out = enc.models[0](input_ids=torch.tensor(ids))
    return out.pooler_output.float()
