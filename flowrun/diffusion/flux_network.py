"""The network adapter of Flux.1 models: diffusers' FluxTransformer2DModel behind the UNet's call signature,
so that DiffusionModel, guidance and every sampler drive it as they drive a UNet.

What ComfyUI's Flux.forward does around the transformer is done here, the way diffusers' FluxPipeline does
it (the two agree): the latent [b, c, h, w] is padded to even sizes (circular, as ComfyUI's
pad_to_patch_size), cut into 2x2 patches [b, h/2 * w/2, 4c] (channel, then row and column within the patch),
and given position ids (0, row, column) per patch; the text tokens get ids (0, 0, 0). Reference latents
(Kontext) are packed the same way and appended after the image tokens with ids (1, row + h offset,
column + w offset), ComfyUI's "offset" method, which for one reference is FluxKontextPipeline's ids; the
prediction for them is dropped. The timestep is sigma itself: the transformer scales it (and the
guidance) by 1000, as ComfyUI's timestep_embedding does.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from flowrun.diffusion.dit_network import pad_to_patch


def pack(x: torch.Tensor) -> torch.Tensor:
    """[b, c, h, w] (even h, w) -> [b, h/2 * w/2, c * 4]: 2x2 patches, row by row (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[b, h/2 * w/2, c * 4] -> [b, c, h, w], the inverse of pack."""
    b, _, features = tokens.shape
    x = tokens.view(b, h // 2, w // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, features // 4, h, w)


def image_ids(rows: int, cols: int, index: float = 0.0, h_offset: int = 0, w_offset: int = 0,
              device=None) -> torch.Tensor:
    """[rows * cols, 3] position ids of a packed latent: (index, row + h_offset, column + w_offset)."""
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(rows, device=device)[:, None] + h_offset
    ids[..., 2] = torch.arange(cols, device=device)[None, :] + w_offset
    return ids.reshape(rows * cols, 3)


def reference_tokens(refs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Packed reference latents and their ids, placed by ComfyUI's default ("offset") method for Flux.1:
    index 1, each next reference beside (or below) the ones before it; offsets are kept in latent pixels
    and rounded to patches, as ComfyUI's process_img does."""
    tokens, ids = [], []
    h = w = 0
    for ref in refs:
        ref_h, ref_w = ref.shape[-2], ref.shape[-1]
        h_offset = w_offset = 0
        if ref_h + h > ref_w + w:
            w_offset = w
        else:
            h_offset = h
        h, w = max(h, ref_h + h_offset), max(w, ref_w + w_offset)
        ref = pad_to_patch(ref, 2)
        tokens.append(pack(ref))
        ids.append(image_ids(ref.shape[-2] // 2, ref.shape[-1] // 2, 1.0, (h_offset + 1) // 2, (w_offset + 1) // 2,
                             device=ref.device))
    return tokens, ids


class FluxNetwork(torch.nn.Module):
    """FluxTransformer2DModel (`.transformer`) called like a UNet: (x [b, c, h, w], sigma-timestep,
    encoder_hidden_states=T5 tokens, added_cond_kwargs={pooled_projections, guidance}) -> (prediction,).
    `config.in_channels`/`out_channels` count latent channels (before packing), as a UNet's do."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        tc = transformer.config
        packed_out = tc.out_channels or tc.in_channels
        self.config = SimpleNamespace(in_channels=tc.in_channels // 4, out_channels=packed_out // 4,
                                      guidance_embeds=bool(tc.guidance_embeds),
                                      pooled_projection_dim=tc.pooled_projection_dim,
                                      joint_attention_dim=tc.joint_attention_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict | None = None, return_dict: bool = False,
                ref_latents: list[torch.Tensor] | None = None, **kwargs) -> tuple[torch.Tensor]:
        if kwargs:
            raise ValueError(f"a Flux model takes no {', '.join(sorted(kwargs))} (UNet-only inputs)")
        added = added_cond_kwargs or {}
        b, _, h, w = x.shape
        x = pad_to_patch(x, 2)
        rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
        tokens, ids = [pack(x)], [image_ids(rows, cols, device=x.device)]
        if ref_latents:
            ref_tokens, ref_ids = reference_tokens([r.to(x.device, x.dtype) for r in ref_latents])
            tokens += [t.expand(b, -1, -1) if t.shape[0] == 1 else t for t in ref_tokens]
            ids += ref_ids
        guidance = None
        if self.config.guidance_embeds:
            guidance = added.get("guidance")
            guidance = (torch.full((b,), 3.5) if guidance is None else guidance.reshape(b)).to(x.device, x.dtype)
        pooled = added.get("pooled_projections")
        if pooled is None:
            pooled = torch.zeros(b, self.config.pooled_projection_dim)
        context = encoder_hidden_states
        out = self.transformer(
            hidden_states=torch.cat(tokens, dim=1), encoder_hidden_states=context,
            pooled_projections=pooled.to(x.device, x.dtype), timestep=timestep.to(x.dtype).reshape(-1).expand(b),
            img_ids=torch.cat(ids).to(x.device), txt_ids=torch.zeros(context.shape[1], 3, device=x.device),
            guidance=guidance, return_dict=False)[0]
        out = unpack(out[:, :rows * cols], rows * 2, cols * 2)[:, :, :h, :w]
        return (out,)
