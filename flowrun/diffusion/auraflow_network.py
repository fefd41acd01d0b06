"""AuraFlow's MMDiT (fal, 2024) behind the UNet's call signature, so that DiffusionModel, guidance and every
sampler drive it as they drive a UNet: diffusers' AuraFlowTransformer2DModel does the work (`.transformer`).

What the adapter adds is what ComfyUI's AuraFlow MMDiT (comfy/ldm/aura/mmdit.py) does around the same network:
- a latent whose height or width is not a multiple of the patch size is padded circularly at the bottom and
  right (pad_to_patch_size) and the prediction cropped back;
- the position table (a square grid) is read from its centre as ComfyUI reads it, (grid - n) // 2, and
  stretched bilinearly for an image larger than the grid. diffusers starts at grid // 2 - n // 2, which is the
  same for an even number of patches and one row off for an odd one (see ComfyPatchEmbed);
- the timestep is sigma itself (FlowSampling multiplier 1.0, ComfyUI's ModelSamplingAuraFlow); the network
  scales it by 1000 inside, as diffusers' AuraFlowPipeline gives it t / 1000.
Latents: SDXL's autoencoder, seen as latent * 0.13025 (ComfyUI's latent_formats.SDXL).
"""

from __future__ import annotations

import math

import torch

from flowrun.diffusion.dit_network import DiTNetwork, pad_to_patch

LATENT_SCALE = 0.13025  # ComfyUI's latent_formats.SDXL, which supported_models.AuraFlow uses


def latent_format(channels: int = 4) -> tuple:
    """(mean, std, scale) per channel: the model sees latent * 0.13025 (process_latent_in)."""
    return ([0.0] * channels, [1.0] * channels, LATENT_SCALE)


def comfy_positions(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[1, h * w, d]: the centre h x w of the square position table [1, n * n, d] as ComfyUI reads it, the
    table stretched bilinearly first when h or w exceeds its side."""
    side = math.isqrt(table.shape[1])
    grid = table.reshape(1, side, side, -1)
    if max(h, w) > side:
        side = max(h, w)
        grid = torch.nn.functional.interpolate(grid.movedim(-1, 1), (side, side), mode="bilinear").movedim(1, -1)
    top, left = (side - h) // 2, (side - w) // 2
    return grid[:, top:top + h, left:left + w].reshape(1, h * w, -1)


def _comfy_patch_embed_forward(self, latent: torch.Tensor) -> torch.Tensor:
    """diffusers' AuraFlowPatchEmbed.forward with ComfyUI's choice of positions (comfy_positions)."""
    b, c, height, width = latent.shape
    p = self.patch_size
    x = latent.view(b, c, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5).flatten(-3).flatten(1, 2)
    return self.proj(x) + comfy_positions(self.pos_embed, height // p, width // p).to(x.dtype)


def use_comfy_positions(transformer: torch.nn.Module) -> torch.nn.Module:
    """The transformer with its patch embedding reading positions as ComfyUI does. The weights and their names
    are unchanged (the state dict is diffusers'); only the instance's forward is replaced, which is why this
    is a bound method rather than a subclass: diffusers builds the module and the loader assigns its tensors."""
    embed = transformer.pos_embed
    embed.forward = _comfy_patch_embed_forward.__get__(embed, type(embed))
    return transformer


class AuraFlowNetwork(DiTNetwork):
    """adapter(x, t, encoder_hidden_states=context) -> (velocity,); AuraFlow takes nothing beside the context."""

    name = "AuraFlow"

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                added_cond_kwargs: dict | None = None, return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        self.refuse_unet_inputs(kwargs)
        width = int(self.transformer.config.joint_attention_dim)
        self.check_context(encoder_hidden_states, width, "Pile-T5")
        dtype = next(self.transformer.parameters()).dtype
        h, w = x.shape[-2:]
        x = pad_to_patch(x, int(self.transformer.config.patch_size))
        out = self.transformer(hidden_states=x.to(dtype), encoder_hidden_states=encoder_hidden_states.to(dtype),
                               timestep=t.float().expand(x.shape[0]), return_dict=False)[0]
        return (out[..., :h, :w],)
