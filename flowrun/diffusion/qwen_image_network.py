"""Qwen-Image's MMDiT (Alibaba, 2025) behind the UNet's call signature, so that DiffusionModel, guidance and every
sampler drive it as they drive a UNet: diffusers' QwenImageTransformer2DModel does the work (`.transformer`).

What the adapter adds is what ComfyUI's Qwen-Image model (comfy/ldm/qwen_image/model.py) and diffusers'
QwenImagePipeline do around the same network:
- the latent [b, 16, h, w] is padded circularly to a multiple of the patch size, cut into 2x2 patches (a sequence
  of 64-wide tokens, QwenImagePipeline._pack_latents), and the prediction put back together and cropped;
- the image's rotary positions come from its patch grid (img_shapes: one frame of h/2 x w/2);
- the timestep is sigma itself (ComfyUI's sampling multiplier 1.0; the pipeline gives the network t / 1000), the
  network scales it by 1000 inside;
- every text token is attended to (no mask): a context holds no padding (the text encoder's output is cut to the
  prompt, not padded), as ComfyUI passes no mask then.
Latents: the 16-channel Qwen-Image VAE's (Wan 2.1's), seen per channel as (latent - mean) / std (ComfyUI's
latent_formats.Wan21, the pipeline's latents_mean / latents_std).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from flowrun.diffusion.dit_network import DiTNetwork, pad_to_patch

# ComfyUI's latent_formats.Wan21 (= the Qwen-Image VAE config's latents_mean / latents_std)
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]


def latent_format() -> tuple:
    """(mean, std, scale) per channel: the model sees (latent - mean) / std (process_latent_in)."""
    return (LATENTS_MEAN, LATENTS_STD, 1.0)


def pack(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[b, c, h, w] -> [b, (h / p) * (w / p), c * p * p], patches row by row (QwenImagePipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(x: torch.Tensor, h: int, w: int, patch: int) -> torch.Tensor:
    """`pack` undone: [b, (h / p) * (w / p), c * p * p] -> [b, c, h, w]."""
    b, _, width = x.shape
    c = width // (patch * patch)
    x = x.view(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class QwenImageNetwork(DiTNetwork):
    """adapter(x, t, encoder_hidden_states=context) -> (velocity,); Qwen-Image takes nothing beside the context."""

    name = "Qwen-Image"

    @property
    def config(self) -> SimpleNamespace:
        """The transformer's config (patch_size, joint_attention_dim, ...) with in_channels per latent pixel (the
        network's 64 are 2x2 patches of 16), as flowrun's checks of a UNet's extra input channels read it."""
        config = dict(self.transformer.config)
        config["in_channels"] = int(config["in_channels"]) // int(config["patch_size"]) ** 2
        return SimpleNamespace(**config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                added_cond_kwargs: dict | None = None, return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        self.refuse_unet_inputs(kwargs)
        width = int(self.transformer.config.joint_attention_dim)
        self.check_context(encoder_hidden_states, width, "Qwen2.5-VL")
        dtype = next(self.transformer.parameters()).dtype
        patch = int(self.transformer.config.patch_size)
        h, w = x.shape[-2:]
        x = pad_to_patch(x, patch)
        ph, pw = x.shape[-2:]
        shapes = [[(1, ph // patch, pw // patch)]] * x.shape[0]
        out = self.transformer(hidden_states=pack(x, patch).to(dtype),
                               encoder_hidden_states=encoder_hidden_states.to(dtype),
                               timestep=t.float().expand(x.shape[0]).to(dtype), img_shapes=shapes,
                               return_dict=False)[0]
        return (unpack(out.float(), ph, pw, patch)[..., :h, :w],)
