"""What the DiT network adapters share (SD3, Flux, AuraFlow, Qwen-Image, Z-Image): each wraps a diffusers
transformer (`.transformer`) behind the UNet's call signature, pads a latent off its patch grid as ComfyUI
does (comfy.ldm.common_dit.pad_to_patch_size: circular, at the bottom and right), and refuses the inputs that
only a UNet has a place for, naming the model, rather than ignoring them."""

from __future__ import annotations

import torch


def pad_to_patch(x: torch.Tensor, patch: int) -> torch.Tensor:
    """x padded circularly at the bottom and right to a multiple of `patch` in height and width."""
    pad_h, pad_w = (-x.shape[-2]) % patch, (-x.shape[-1]) % patch
    if pad_h == 0 and pad_w == 0:
        return x
    return torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="circular")


class DiTNetwork(torch.nn.Module):
    """The base of a family's adapter: `name` is how messages call the model ("the SD3 model")."""

    name = "DiT"

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    @property
    def config(self):
        """The transformer's config (in_channels, patch_size, ...), which samplers and checks read."""
        return self.transformer.config

    def refuse_unet_inputs(self, kwargs: dict) -> None:
        """ControlNet residuals, class labels: UNet inputs this network has no place for."""
        if kwargs:
            raise ValueError(f"the {self.name} model takes no {', '.join(sorted(kwargs))} (a UNet's input: a "
                             "ControlNet or unCLIP conditioning of an SD1/SD2/SDXL model?)")

    def check_context(self, context: torch.Tensor | None, width: int, encoder: str) -> None:
        """The text context must be as wide as the network reads (else it came from another family's CLIP)."""
        if context is None or context.shape[-1] != width:
            found = "none" if context is None else f"{context.shape[-1]} wide"
            raise ValueError(f"the {self.name} model reads a {width}-wide {encoder} text context; this "
                             f"conditioning's is {found} (from a CLIP of another family?)")
