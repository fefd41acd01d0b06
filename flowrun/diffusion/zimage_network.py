"""Z-Image's single-stream DiT (Tongyi-MAI, 2025) behind the UNet's call signature, so that DiffusionModel,
guidance and every sampler drive it as they drive a UNet: diffusers' ZImageTransformer2DModel does the work
(`.transformer`).

What the adapter adds is what ComfyUI's Lumina 2 / Z-Image model (model_base.Lumina2, the NextDiT) and diffusers'
ZImagePipeline both do around the same network:
- the network reads time running the other way, 1 - sigma (ComfyUI: `1.0 - timesteps`; diffusers'
  pipeline: (1000 - t) / 1000), and predicts the negated velocity, so the adapter negates it back;
- it takes a list of [c, frames, h, w] images and a list of [tokens, width] captions, each caption only its real
  tokens (no padding, no mask): the adapter splits the batch, cutting each row's context to its own length
  (`cap_tokens` from added_inputs: guidance may have repeated a shorter prompt to batch it with a longer one;
  ComfyUI passes num_tokens and an attention mask for the same reason);
- a latent off the 2 x 2 patch grid is padded circularly at the bottom and right and the prediction cropped back.
Latents: Flux's autoencoder, seen as (latent - 0.1159) * 0.3611 (ComfyUI's latent_formats.Flux, which
supported_models.Lumina2 and ZImage use).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from flowrun.diffusion.dit_network import DiTNetwork, pad_to_patch

LATENT_SCALE, LATENT_SHIFT = 0.3611, 0.1159  # ComfyUI's latent_formats.Flux


def latent_format(channels: int = 16) -> tuple:
    """(mean, std, scale) per channel: the model sees (latent - 0.1159) * 0.3611 (process_latent_in)."""
    return ([LATENT_SHIFT] * channels, [1.0] * channels, LATENT_SCALE)


class ZImageNetwork(DiTNetwork):
    """adapter(x, t, encoder_hidden_states=context, added_cond_kwargs={"cap_tokens": [b, 2]}) -> (velocity,)."""

    name = "Z-Image"

    @property
    def config(self):
        """The transformer's config (in_channels, dim, cap_feat_dim, all_patch_size, ...) with out_channels, which
        the samplers read and diffusers' config leaves out (the network predicts as many channels as it reads)."""
        config = dict(self.transformer.config)
        return SimpleNamespace(**config, out_channels=config["in_channels"])

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                added_cond_kwargs: dict | None = None, return_dict: bool = False, **kwargs) -> tuple[torch.Tensor]:
        self.refuse_unet_inputs(kwargs)
        width = int(self.transformer.config.cap_feat_dim)
        self.check_context(encoder_hidden_states, width, "Qwen3")
        b = x.shape[0]
        lengths = [encoder_hidden_states.shape[1]] * b
        if added_cond_kwargs and "cap_tokens" in added_cond_kwargs:
            counts = added_cond_kwargs["cap_tokens"].float().expand(b, -1)  # (n // 128, n % 128) per row
            lengths = [int(hi) * 128 + int(lo) for hi, lo in counts.round().tolist()]
        dtype = next(self.transformer.parameters()).dtype
        h, w = x.shape[-2:]
        x = pad_to_patch(x, int(self.transformer.config.all_patch_size[0]))
        images = list(x.to(dtype).unsqueeze(2).unbind(0))  # [c, 1 frame, h, w] each
        context = encoder_hidden_states.expand(b, -1, -1).to(dtype)
        captions = [context[i, :lengths[i]] for i in range(b)]
        out = self.transformer(images, 1.0 - t.float().expand(b), captions, return_dict=False)[0]
        out = -torch.stack([o.float() for o in out]).squeeze(2)
        return (out[..., :h, :w],)
