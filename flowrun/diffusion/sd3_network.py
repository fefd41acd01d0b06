"""SD3's MMDiT (Esser et al. 2024) behind the UNet's call signature, so that DiffusionModel, guidance and every
sampler drive it as they drive a UNet: diffusers' SD3Transformer2DModel does the work (`.transformer`).

What the adapter adds is what ComfyUI's MMDiT does around the same network: a latent whose height or width is
not a multiple of the patch size is padded circularly at the bottom and right (comfy.ldm.common_dit's
pad_to_patch_size) and the prediction cropped back; the pooled text vector comes from the conditioning's added
inputs (flowrun.diffusion.added_inputs); the timestep is sigma * 1000 (FlowSampling), as the model was trained.
"""

from __future__ import annotations

import torch

from flowrun.diffusion.dit_network import DiTNetwork, pad_to_patch

LATENT_SHIFT, LATENT_SCALE = 0.0609, 1.5305  # ComfyUI's latent_formats.SD3: (latent - shift) * scale


def latent_format(channels: int = 16) -> tuple:
    """(mean, std, scale) per channel: the model sees (latent - 0.0609) * 1.5305 (process_latent_in)."""
    return ([LATENT_SHIFT] * channels, [1.0] * channels, LATENT_SCALE)


class SD3Network(DiTNetwork):
    """adapter(x, t, encoder_hidden_states=context, added_cond_kwargs={"pooled_projections": ...}) -> (velocity,)."""

    name = "SD3"

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                added_cond_kwargs: dict | None = None, return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        self.refuse_unet_inputs(kwargs)
        if not added_cond_kwargs or "pooled_projections" not in added_cond_kwargs:
            raise ValueError("the SD3 model needs the pooled text vector; conditioning without one (from a CLIP of "
                             "another family?)")
        dtype = next(self.transformer.parameters()).dtype
        h, w = x.shape[-2:]
        x = pad_to_patch(x, int(self.transformer.config.patch_size))
        out = self.transformer(hidden_states=x.to(dtype), encoder_hidden_states=encoder_hidden_states.to(dtype),
                               pooled_projections=added_cond_kwargs["pooled_projections"].to(dtype),
                               timestep=t.float().expand(x.shape[0]), return_dict=False)[0]
        return (out[..., :h, :w],)
