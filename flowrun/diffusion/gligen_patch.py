"""The GLIGEN patch: text boxes acting through GLIGEN's fusers during one forward pass of the UNet
(flowrun/diffusion/gligen.py loads the model). A plain UNet has no fusers, so for each pass of an entry
with boxes the patch lends every transformer block its fuser and the UNet the position net, and hands the
boxes in as diffusers' `cross_attention_kwargs["gligen"]`; all of it is taken away after the pass, leaving
the shared UNet as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowrun.diffusion.unet_patches import _Undo

MAX_OBJECTS = 30  # the position net's slots (GLIGEN's max_objs)


@dataclass(eq=False)
class Gligen:
    """A GLIGEN value: one fuser per UNet transformer block (in forward order) and the position net."""

    fusers: list
    position_net: Any  # diffusers GLIGENTextBoundingboxProjection
    key_dim: int  # the phrases' pooled text embedding width
    fingerprint: str


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
