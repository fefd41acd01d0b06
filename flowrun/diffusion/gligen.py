"""GLIGEN (Li et al. 2023): text boxes that place things, through gated self-attention layers ("fusers")
added after the self-attention of every transformer block of an SD1 UNet, fed by a position net that
embeds each box's corners with its phrase's pooled text embedding; as ComfyUI's gligen.py applies them.

Built on diffusers' own GLIGEN classes (GatedSelfAttentionDense, GLIGENTextBoundingboxProjection). A plain
UNet has no fusers, so for each forward pass of an entry with boxes the patch lends every transformer block
its fuser and the UNet the position net, and hands the boxes in as diffusers' `cross_attention_kwargs
["gligen"]`; all of it is taken away after the pass, leaving the shared UNet as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowrun.diffusion.detect import CheckpointError
from flowrun.diffusion.unet_patches import _Undo

MAX_OBJECTS = 30  # the position net's slots (GLIGEN's max_objs)
_SECTIONS = ("input_blocks", "middle_block", "output_blocks")


@dataclass(eq=False)
class Gligen:
    """A GLIGEN value: one fuser per UNet transformer block (in forward order) and the position net."""

    fusers: list
    position_net: Any  # diffusers GLIGENTextBoundingboxProjection
    key_dim: int  # the phrases' pooled text embedding width
    fingerprint: str


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


def _transformer_blocks(unet: Any) -> list:
    """The UNet's BasicTransformerBlocks in the order its forward pass runs them."""
    from diffusers.models.attention import BasicTransformerBlock

    parts = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)  # not registration order
    return [m for part in parts if part is not None for m in part.modules() if isinstance(m, BasicTransformerBlock)]


@dataclass(frozen=True, eq=False)
class Boxes:
    """A UNet patch: GLIGEN text boxes ((pooled phrase embedding [1, key_dim], height, width, y, x) in latent
    pixels, ComfyUI's position_params) applied through `gligen`'s fusers during one forward pass."""

    gligen: Gligen
    boxes: tuple

    def inputs(self, rows: int, h: int, w: int) -> dict[str, torch.Tensor]:
        """The position net's inputs for a latent of h x w: corners as parts of it, padded to 30 slots."""
        if len(self.boxes) > MAX_OBJECTS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJECTS} text boxes; this conditioning has {len(self.boxes)}")
        boxes = torch.zeros(MAX_OBJECTS, 4)
        masks = torch.zeros(MAX_OBJECTS)
        phrases = torch.zeros(MAX_OBJECTS, self.gligen.key_dim)
        for i, (pooled, bh, bw, by, bx) in enumerate(self.boxes):
            boxes[i] = torch.tensor([bx / w, by / h, (bx + bw) / w, (by + bh) / h])
            masks[i] = 1.0
            phrases[i] = torch.as_tensor(pooled).float().reshape(-1)
        return {"boxes": boxes.expand(rows, -1, -1), "masks": masks.expand(rows, -1),
                "positive_embeddings": phrases.expand(rows, -1, -1)}

    def attach(self, unet: Any, info: Any) -> list:
        blocks = _transformer_blocks(unet)
        if len(blocks) != len(self.gligen.fusers):
            raise ValueError(f"this GLIGEN model has {len(self.gligen.fusers)} fusers, the model's UNet "
                             f"{len(blocks)} transformer blocks: it was made for another model")
        handles = []
        for block, fuser in zip(blocks, self.gligen.fusers):
            fuser.to(next(block.parameters()).device)
            block.fuser = fuser
            handles.append(_Undo(lambda block=block: delattr(block, "fuser")))
        unet.position_net = self.gligen.position_net.to(unet.device)
        handles.append(_Undo(lambda: delattr(unet, "position_net")))

        def hook(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            extra = dict(kwargs.get("cross_attention_kwargs") or {})
            extra["gligen"] = {k: v.to(sample.device, sample.dtype)
                               for k, v in self.inputs(sample.shape[0], sample.shape[2], sample.shape[3]).items()}
            return args, {**kwargs, "cross_attention_kwargs": extra}

        handles.append(unet.register_forward_pre_hook(hook, with_kwargs=True))
        return handles


def unet_patches(cond: Any) -> tuple:
    """The patches a conditioning entry's GLIGEN boxes add to its passes (none without boxes)."""
    boxes = getattr(cond, "gligen", None)
    return (boxes,) if boxes is not None else ()


def pooled_unprojected(enc: Any, text: str) -> torch.Tensor:
    """A phrase's pooled text embedding [1, width] before any projection (the final norm of its end token,
    first 77-token chunk), as ComfyUI's encode_from_tokens(return_pooled="unprojected")."""
    from flowrun.diffusion.clip import END, tokenize
    from flowrun.diffusion.lora import patched

    ids = [[int(t) for t, _ in tokenize(enc.tokenizer, text, END)[0]]]
    with patched(enc.models, enc.patches), torch.no_grad():
        out = enc.models[0](input_ids=torch.tensor(ids))
    return out.pooler_output.float()
